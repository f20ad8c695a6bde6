//! The admin API and tenant self-service: operator-only endpoints refuse tenant
//! keys, and no tenant key can read or change another tenant.

use serde_json::{Value, json};

use crate::support::{Gateway, error_code, unique};

#[tokio::test]
async fn tenant_keys_cannot_use_operator_endpoints() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("adm-a")).await;
    let b = gw.create_tenant(&unique("adm-b")).await;
    for key in [&a.admin_key, &a.service_key] {
        for (method, path, body) in [
            ("GET", "/admin/v1/tenants".to_string(), None),
            ("POST", "/admin/v1/tenants".to_string(), Some(json!({ "name": unique("evil") }))),
            ("GET", format!("/admin/v1/tenants/{}", a.name), None),
            ("GET", format!("/admin/v1/tenants/{}", b.name), None),
            ("GET", format!("/admin/v1/tenants/{}/keys", b.name), None),
            ("POST", format!("/admin/v1/tenants/{}/keys", b.name), Some(json!({ "role": "admin" }))),
            ("DELETE", format!("/admin/v1/tenants/{0}?confirm={0}", b.name), None),
            ("GET", "/admin/v1/audit".to_string(), None),
        ] {
            let mut req = gw.http.request(method.parse().expect("method"), gw.url(&path)).bearer_auth(key);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.expect("req");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("json");
            assert_eq!(status, 401, "{method} {path} with a tenant key: {body}");
            error_code(&body);
        }
    }
    // B is untouched.
    let (status, _) = gw.get("/v1/tenant", &b.service_key).await;
    assert_eq!(status, 200);
    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn tenant_self_service_is_confined_to_its_tenant() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("self-a")).await;
    let b = gw.create_tenant(&unique("self-b")).await;
    let b_service_prefix = b.body["service_key"]["prefix"].as_str().expect("prefix").to_owned();

    // A sees only its own keys.
    let (status, keys) = gw.get("/v1/keys", &a.admin_key).await;
    assert_eq!(status, 200);
    let prefixes: Vec<&str> =
        keys["keys"].as_array().expect("keys").iter().filter_map(|k| k["prefix"].as_str()).collect();
    assert_eq!(prefixes.len(), 2);
    assert!(!prefixes.contains(&b_service_prefix.as_str()));

    // A cannot revoke B's key: it is "not found", and B's key keeps working.
    let resp = gw
        .http
        .delete(gw.url(&format!("/v1/keys/{b_service_prefix}")))
        .bearer_auth(&a.admin_key)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 404);
    let (status, who) = gw.get("/v1/tenant", &b.service_key).await;
    assert_eq!((status, who["tenant"].as_str()), (200, Some(b.name.as_str())));

    // A creates a key: it belongs to A, and works as A.
    let resp = gw
        .http
        .post(gw.url("/v1/keys"))
        .bearer_auth(&a.admin_key)
        .json(&json!({ "label": "ci" }))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.expect("json");
    let new_key = created["key"].as_str().expect("key");
    let (_, who) = gw.get("/v1/tenant", new_key).await;
    assert_eq!(who["tenant"], a.name.as_str());
    assert_eq!(who["key"]["role"], "service");

    // A's audit log holds A's actions only.
    let (status, audit) = gw.get("/v1/audit", &a.admin_key).await;
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().expect("entries");
    assert!(entries.iter().any(|e| e["action"] == "key.create"));
    assert!(entries.iter().all(|e| e["tenant"] == a.name.as_str()), "{audit}");
    let created_by_a = entries.iter().find(|e| e["action"] == "key.create").expect("entry");
    assert!(created_by_a["actor"].as_str().unwrap_or("").starts_with("key:"));
    assert!(created_by_a["request_id"].is_string());

    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn operator_manages_keys_and_sees_the_audit_log() {
    let gw = Gateway::start().await;
    let op = gw.operator_token();
    let t = gw.create_tenant(&unique("opkeys")).await;

    let resp = gw
        .http
        .post(gw.url(&format!("/admin/v1/tenants/{}/keys", t.name)))
        .bearer_auth(&op)
        .json(&json!({ "role": "admin", "label": "break-glass" }))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 201);
    let k: Value = resp.json().await.expect("json");
    let (status, _) = gw.get("/v1/keys", k["key"].as_str().expect("key")).await;
    assert_eq!(status, 200, "new admin key manages keys");

    let (status, shown) = gw.get(&format!("/admin/v1/tenants/{}", t.name), &op).await;
    assert_eq!(status, 200);
    assert_eq!(shown["keys"].as_array().map(Vec::len), Some(3));
    assert!(shown["quotas"]["pg_pool_size"].is_number());
    assert!(shown["tenant"].get("scram_salt").is_none(), "internal fields stay internal");

    let prefix = k["prefix"].as_str().expect("prefix");
    let resp = gw
        .http
        .delete(gw.url(&format!("/admin/v1/tenants/{}/keys/{prefix}", t.name)))
        .bearer_auth(&op)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 204);
    let (status, _) = gw.get("/v1/keys", k["key"].as_str().expect("key")).await;
    assert_eq!(status, 401);

    let (_, audit) = gw.get(&format!("/admin/v1/audit?tenant={}", t.name), &op).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    for want in ["tenant.create", "key.create", "key.revoke"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    let (status, list) = gw.get("/admin/v1/tenants", &op).await;
    assert_eq!(status, 200);
    assert!(list["tenants"].as_array().expect("list").iter().any(|x| x["name"] == t.name.as_str()));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
