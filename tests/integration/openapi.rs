//! The OpenAPI document matches what the gateway serves and routes.

use serde_json::Value;

use crate::support::{Gateway, repo_root};

#[tokio::test]
async fn served_document_equals_checked_in_and_every_operation_is_routed() {
    let gw = Gateway::start().await;
    let served: Value = gw.http.get(gw.url("/openapi.json")).send().await.expect("req").json().await.expect("json");
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("docs/openapi.json")).expect("docs/openapi.json"),
    )
    .expect("valid JSON");
    assert_eq!(
        served, on_disk,
        "docs/openapi.json drifted from /openapi.json: run `sluice openapi > docs/openapi.json`"
    );
    assert_eq!(served["openapi"], "3.1.0");

    let paths = served["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, methods) in paths {
        let concrete: String =
            path.split('/').map(|seg| if seg.starts_with('{') { "x1" } else { seg }).collect::<Vec<_>>().join("/");
        for method in methods.as_object().expect("methods").keys() {
            let resp = gw
                .http
                .request(method.to_uppercase().parse().expect("method"), gw.url(&concrete))
                .send()
                .await
                .expect("req");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let unrouted = status == 405 || (status == 404 && body["error"]["message"] == "no such route");
            assert!(!unrouted, "{method} {path} is documented but not routed ({status} {body})");
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} operations documented");
    gw.stop().await;
}
