//! API-key authentication on the HTTP door.

use crate::support::{Gateway, error_code, unique};

#[tokio::test]
async fn rejects_missing_malformed_unknown_wrong_and_revoked_keys() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("auth")).await;

    // Missing.
    let resp = gw.http.get(gw.url("/v1/tenant")).send().await.expect("req");
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(error_code(&body), "unauthenticated");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("missing API key"), "{body}");

    let expect = async |token: &str, needle: &str| {
        let (status, body) = gw.get("/v1/tenant", token).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert_eq!(error_code(&body), "unauthenticated");
        let msg = body["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{token}: expected {needle:?} in {msg:?}");
    };
    expect("not-a-key", "malformed").await;
    expect("slk_short_secret", "malformed").await;
    expect("slk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "unknown").await;
    // Right prefix, wrong secret: indistinguishable from an unknown key.
    let prefix = &t.service_key[..16];
    expect(&format!("{prefix}_{}", "Z".repeat(32)), "unknown").await;

    // Non-bearer scheme.
    let resp = gw
        .http
        .get(gw.url("/v1/tenant"))
        .header("authorization", format!("Basic {}", t.service_key))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 401);

    // A good key works through either header.
    let (status, body) = gw.get("/v1/tenant", &t.service_key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant"], t.name.as_str());
    assert_eq!(body["key"]["role"], "service");
    let resp = gw.http.get(gw.url("/v1/tenant")).header("x-api-key", &t.service_key).send().await.expect("req");
    assert_eq!(resp.status(), 200);

    // A service key may not manage keys.
    let (status, body) = gw.get("/v1/keys", &t.service_key).await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"));

    // Revoked.
    let service_prefix = t.body["service_key"]["prefix"].as_str().expect("prefix");
    let resp = gw
        .http
        .delete(gw.url(&format!("/v1/keys/{service_prefix}")))
        .bearer_auth(&t.admin_key)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 204);
    expect(&t.service_key, "revoked").await;

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
