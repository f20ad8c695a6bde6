//! Vector collections on the tenant's real pgvector database.

use serde_json::{Value, json};

use crate::support::{Gateway, call, error_code, unique};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": { "price": { "type": "number" }, "color": { "enum": ["red", "green", "blue", "rare"] } },
        "additionalProperties": true
    })
}

#[tokio::test]
async fn lifecycle_upsert_search_filter() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("vec")).await;
    let spec = json!({ "dimension": 3, "metric": "cosine", "metadata_schema": schema() });
    let (s, c) = call(&gw, &t, "PUT", "/v1/collections/items", Some(spec.clone())).await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["dimension"], 3);
    assert_eq!(c["cache_threshold"], json!(0.95), "the default threshold prints as written: {c}");
    let (s, _) = call(&gw, &t, "PUT", "/v1/collections/items", Some(spec)).await;
    assert_eq!(s, 200, "identical re-create is a no-op");
    let (s, e) = call(&gw, &t, "PUT", "/v1/collections/items", Some(json!({ "dimension": 4 }))).await;
    assert_eq!((s, error_code(&e)), (409, "conflict"));

    let points = json!({ "points": [
        { "id": "a", "vector": [1, 0, 0], "metadata": { "price": 5, "color": "red" } },
        { "id": "b", "vector": [0.9, 0.1, 0], "metadata": { "price": 15, "color": "green" } },
        { "id": "c", "vector": [0, 1, 0], "metadata": { "price": 25, "color": "blue", "shop": { "city": "Oslo" } } },
        { "id": 4, "vector": [0, 0, 1], "metadata": { "price": 35 } },
        { "id": "e", "vector": [0.7, 0.7, 0] }
    ]});
    let (s, v) = call(&gw, &t, "POST", "/v1/collections/items/points", Some(points)).await;
    assert_eq!((s, v["upserted"].as_u64()), (200, Some(5)), "{v}");
    let version = v["version"].as_i64().expect("version");

    let (s, v) =
        call(&gw, &t, "POST", "/v1/collections/items/search", Some(json!({ "vector": [1, 0, 0], "k": 3 }))).await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["hits"].as_array().expect("hits").iter().filter_map(|h| h["id"].as_str()).collect();
    assert_eq!(ids, ["a", "b", "e"]);
    assert!((v["hits"][0]["score"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-6);
    assert_eq!(v["hits"][0]["metadata"]["color"], "red");
    assert!(v["hits"][0].get("vector").is_none());

    let filtered = |f: Value| json!({ "vector": [1, 0, 0], "k": 10, "filter": f });
    for (f, want) in [
        (json!({ "color": "green" }), vec!["b"]),
        (json!({ "price": { "gte": 15, "lt": 35 } }), vec!["b", "c"]),
        (json!({ "color": { "in": ["red", "blue"] } }), vec!["a", "c"]),
        (json!({ "shop.city": "Oslo" }), vec!["c"]),
        (json!({ "or": [{ "color": "red" }, { "price": { "gt": 30 } }] }), vec!["4", "a"]),
        (json!({ "not": { "price": { "exists": true } } }), vec!["e"]),
        (json!({ "color": { "ne": "red" }, "price": { "lte": 25 } }), vec!["b", "c"]),
    ] {
        let (s, v) = call(&gw, &t, "POST", "/v1/collections/items/search", Some(filtered(f.clone()))).await;
        assert_eq!(s, 200, "{f}: {v}");
        let mut ids: Vec<&str> = v["hits"].as_array().expect("hits").iter().filter_map(|h| h["id"].as_str()).collect();
        ids.sort();
        assert_eq!(ids, want, "filter {f}");
    }
    let (_, v) = call(
        &gw,
        &t,
        "POST",
        "/v1/collections/items/search",
        Some(json!({ "vector": [0, 1, 0], "k": 1, "include": { "vector": true, "metadata": false } })),
    )
    .await;
    assert_eq!(v["hits"][0]["vector"], json!([0.0, 1.0, 0.0]));
    assert!(v["hits"][0].get("metadata").is_none());

    let (s, v) = call(&gw, &t, "GET", "/v1/collections/items/points/4", None).await;
    assert_eq!((s, v["metadata"]["price"].as_i64()), (200, Some(35)));
    let (s, _) = call(&gw, &t, "DELETE", "/v1/collections/items/points/4", None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&gw, &t, "GET", "/v1/collections/items/points/4", None).await;
    assert_eq!(s, 404);
    let (s, v) =
        call(&gw, &t, "POST", "/v1/collections/items/points/delete", Some(json!({ "ids": ["a", "zzz"] }))).await;
    assert_eq!((s, v["deleted"].as_u64()), (200, Some(1)));
    assert!(v["version"].as_i64().expect("version") > version, "writes bump the version");
    let (s, v) = call(&gw, &t, "GET", "/v1/collections/items", None).await;
    assert_eq!((s, v["points"].as_i64()), (200, Some(3)));

    let (s, _) = call(&gw, &t, "DELETE", "/v1/collections/items", None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&gw, &t, "GET", "/v1/collections/items", None).await;
    assert_eq!(s, 404);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_is_precise_and_writes_nothing() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("vec-bad")).await;
    for (name, spec, status) in [
        ("Bad-Name", json!({ "dimension": 3 }), 400),
        ("ok", json!({ "dimension": 0 }), 400),
        ("ok", json!({ "dimension": 3, "metric": "manhattan" }), 422),
        ("ok", json!({ "dimension": 3, "metadata_schema": { "type": "nope" } }), 400),
        ("ok", json!({ "dimension": 3, "hnsw": { "m": 1 } }), 400),
    ] {
        let (s, e) = call(&gw, &t, "PUT", &format!("/v1/collections/{name}"), Some(spec.clone())).await;
        assert_eq!(s, status, "{name} {spec}: {e}");
        error_code(&e);
    }
    let (s, _) =
        call(&gw, &t, "PUT", "/v1/collections/items", Some(json!({ "dimension": 3, "metadata_schema": schema() })))
            .await;
    assert_eq!(s, 201);
    call(
        &gw,
        &t,
        "POST",
        "/v1/collections/items/points",
        Some(json!({ "points": [{ "id": "keep", "vector": [1, 1, 1] }] })),
    )
    .await;

    let bad_batches = [
        (
            json!([{ "id": "x", "vector": [1, 2, 3] }, { "id": "y", "vector": [1, 2, 3], "metadata": { "price": "cheap" } }]),
            1,
            Some("/price"),
        ),
        (
            json!([{ "id": "x", "vector": [1, 2, 3] }, { "id": "y", "vector": [1, 2, 3] }, { "id": "z", "vector": [1, 2] }]),
            2,
            None,
        ),
        (json!([{ "id": "x", "vector": [1, 2, 3] }, { "id": "x", "vector": [1, 2, 3] }]), 1, None),
        (json!([{ "id": "", "vector": [1, 2, 3] }]), 0, None),
        (json!([{ "id": "x", "vector": [1, "two", 3] }]), 0, None),
        (json!([{ "id": "x", "vector": [1, 2, 3], "metadata": { "color": "purple" } }]), 0, Some("/color")),
    ];
    for (pts, index, pointer) in bad_batches {
        let (s, e) = call(&gw, &t, "POST", "/v1/collections/items/points", Some(json!({ "points": pts }))).await;
        assert_eq!((s, error_code(&e)), (422, "invalid_point"), "{e}");
        assert_eq!(e["error"]["point"], index, "{e}");
        assert_eq!(e["error"]["pointer"].as_str(), pointer, "{e}");
        assert!(e["error"]["message"].as_str().unwrap_or("").starts_with(&format!("point {index}")), "{e}");
    }
    let (_, v) = call(&gw, &t, "GET", "/v1/collections/items", None).await;
    assert_eq!(v["points"], 1, "bad batches wrote nothing");

    let (s, e) = call(&gw, &t, "POST", "/v1/collections/items/search", Some(json!({ "vector": [1, 0] }))).await;
    assert_eq!(s, 400);
    assert!(e["error"]["message"].as_str().unwrap_or("").contains("2 dimensions"), "{e}");
    let (s, e) = call(
        &gw,
        &t,
        "POST",
        "/v1/collections/items/search",
        Some(json!({ "vector": [1, 0, 0], "filter": { "price": { "between": 1 } } })),
    )
    .await;
    assert_eq!((s, error_code(&e)), (400, "invalid_filter"), "{e}");
    let (s, e) =
        call(&gw, &t, "POST", "/v1/collections/items/search", Some(json!({ "vector": [1, 0, 0], "k": 0 }))).await;
    assert_eq!(s, 400, "{e}");
    for path in ["/v1/collections/nope/search", "/v1/collections/nope/points"] {
        let (s, e) = call(&gw, &t, "POST", path, Some(json!({ "vector": [1, 0, 0], "points": [] }))).await;
        assert!(s == 404 || s == 422, "{path}: {e}");
    }
    let (s, e) = call(&gw, &t, "POST", "/v1/collections/nope/search", Some(json!({ "vector": [1, 0, 0] }))).await;
    assert_eq!((s, error_code(&e)), (404, "not_found"));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn filtered_search_returns_k_when_k_match() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("vec-k")).await;
    call(&gw, &t, "PUT", "/v1/collections/many", Some(json!({ "dimension": 8 }))).await;
    // 2000 points; 1 in 100 is "rare", so a plain HNSW scan with a small
    // ef_search would find almost none of them near the query.
    let mut seed: u64 = 42;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 10_000) as f64 / 10_000.0 - 0.5
    };
    for batch in 0..2 {
        let pts: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                let v: Vec<f64> = (0..8).map(|_| rnd()).collect();
                json!({ "id": format!("p{n}"), "vector": v, "metadata": { "kind": if n % 100 == 0 { "rare" } else { "common" } } })
            })
            .collect();
        let (s, v) = call(&gw, &t, "POST", "/v1/collections/many/points", Some(json!({ "points": pts }))).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = call(&gw, &t, "POST", "/v1/collections/many/search",
        Some(json!({ "vector": [0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4], "k": 15, "ef_search": 10, "filter": { "kind": "rare" } }))).await;
    assert_eq!(s, 200, "{v}");
    let hits = v["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 15, "k results although only 1% match");
    assert!(hits.iter().all(|h| h["metadata"]["kind"] == "rare"));
    let d: Vec<f64> = hits.iter().filter_map(|h| h["distance"].as_f64()).collect();
    assert!(d.windows(2).all(|w| w[0] <= w[1]), "sorted by distance");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn collections_are_per_tenant() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("vec-a")).await;
    let b = gw.create_tenant(&unique("vec-b")).await;
    call(&gw, &a, "PUT", "/v1/collections/shared_name", Some(json!({ "dimension": 2 }))).await;
    call(
        &gw,
        &a,
        "POST",
        "/v1/collections/shared_name/points",
        Some(json!({ "points": [{ "id": "a1", "vector": [1, 0] }] })),
    )
    .await;
    for (m, path, body) in [
        ("GET", "/v1/collections/shared_name", None),
        ("POST", "/v1/collections/shared_name/search", Some(json!({ "vector": [1, 0] }))),
        ("GET", "/v1/collections/shared_name/points/a1", None),
        ("POST", "/v1/collections/shared_name/points", Some(json!({ "points": [{ "id": "a1", "vector": [0, 1] }] }))),
        ("DELETE", "/v1/collections/shared_name/points/a1", None),
        ("DELETE", "/v1/collections/shared_name", None),
    ] {
        let (s, e) = call(&gw, &b, m, path, body).await;
        assert_eq!(s, 404, "B {m} {path}: {e}");
    }
    let (_, list) = call(&gw, &b, "GET", "/v1/collections", None).await;
    assert_eq!(list["collections"], json!([]));
    // B's own collection of the same name is independent.
    let (s, _) = call(&gw, &b, "PUT", "/v1/collections/shared_name", Some(json!({ "dimension": 5 }))).await;
    assert_eq!(s, 201);
    let (_, v) = call(&gw, &a, "POST", "/v1/collections/shared_name/search", Some(json!({ "vector": [1, 0] }))).await;
    assert_eq!(v["hits"][0]["id"], "a1", "A's data intact: {v}");
    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

/// SQL `DELETE`/`INSERT`/`UPDATE`/`DROP` of a tenant against `sluice."c_…"`.
async fn tenant_writes_refused(gw: &Gateway, t: &crate::support::TestTenant) {
    for text in [
        r#"DELETE FROM sluice."c_docs""#,
        r#"UPDATE sluice."c_docs" SET metadata = '{"price": "not a number"}'"#,
        r#"INSERT INTO sluice."c_docs" (id, embedding, metadata) VALUES ('x', '[1,0,0]', '{}')"#,
        r#"DROP TABLE sluice."c_docs""#,
        r#"DROP SCHEMA sluice CASCADE"#,
        r#"ALTER TABLE sluice."c_docs" ADD COLUMN x int"#,
    ] {
        let (s, b) = call(gw, t, "POST", "/v1/sql", Some(json!({ "sql": text }))).await;
        assert_ne!(s, 200, "{text}: {b}");
        let detail = b["error"].to_string();
        assert!(detail.contains("42501") || detail.contains("must be owner"), "{text}: {b}");
    }
}

/// Collection tables belong to the gateway's collection owner: tenant SQL
/// may read them, never change them behind the gateway's back; tenants
/// created when they owned the tables are handed over at the next write.
#[tokio::test]
async fn collection_tables_are_read_only_to_tenant_sql() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("owner")).await;
    let (s, c) =
        call(&gw, &t, "PUT", "/v1/collections/docs", Some(json!({ "dimension": 3, "metadata_schema": schema() })))
            .await;
    assert_eq!(s, 201, "{c}");
    let pts = json!({ "points": [{ "id": "a", "vector": [1, 0, 0], "metadata": { "price": 1 } }] });
    assert_eq!(call(&gw, &t, "POST", "/v1/collections/docs/points", Some(pts.clone())).await.0, 200);
    let (s, b) =
        call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": r#"SELECT count(*) AS n FROM sluice."c_docs""# }))).await;
    assert_eq!((s, b["rows"][0][0].as_i64()), (200, Some(1)), "reading is allowed: {b}");
    tenant_writes_refused(&gw, &t).await;
    // The gateway's own writes still work.
    let search = json!({ "vector": [1, 0, 0], "k": 1 });
    let (s, b) = call(&gw, &t, "POST", "/v1/collections/docs/search", Some(search.clone())).await;
    assert_eq!((s, b["hits"][0]["id"].as_str()), (200, Some("a")), "{b}");
    assert_eq!(call(&gw, &t, "DELETE", "/v1/collections/docs/points/a", None).await.0, 204);

    // A tenant of the earlier layout (it owned the schema and tables)…
    let admin = gw.svc.pg_admin.connect(Some(&t.db())).await.expect("admin");
    let role = t.body["tenant"]["db_role"].as_str().expect("role");
    admin
        .batch_execute(&format!(
            r#"ALTER SCHEMA sluice OWNER TO "{role}"; ALTER TABLE sluice."c_docs" OWNER TO "{role}";"#
        ))
        .await
        .expect("old layout");
    let (s, b) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": r#"DELETE FROM sluice."c_docs""# }))).await;
    assert_eq!(s, 200, "the old layout let the tenant write: {b}");
    // …is handed over at the first write of a gateway process.
    let fresh = Gateway::start().await;
    assert_eq!(call(&fresh, &t, "POST", "/v1/collections/docs/points", Some(pts)).await.0, 200);
    tenant_writes_refused(&fresh, &t).await;
    let (s, b) = call(&fresh, &t, "POST", "/v1/collections/docs/search", Some(search)).await;
    assert_eq!((s, b["hits"][0]["id"].as_str()), (200, Some("a")), "{b}");
    assert_eq!(call(&fresh, &t, "DELETE", "/v1/collections/docs", None).await.0, 204);
    fresh.delete_tenant(&t.name).await;
    fresh.stop().await;
    gw.stop().await;
}
