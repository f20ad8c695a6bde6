//! Objects over HTTP (`/v1/objects…`) against the real object store: round
//! trips, multipart streaming, ranges, conditionals, listing, key rules,
//! quotas, isolation between tenants, and an unreachable store.

use std::collections::BTreeSet;

use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Gateway, config, error_code, unique};

fn obj(key: &str) -> String {
    format!("/v1/objects/{key}")
}

/// Deterministic pseudo-random bytes (xorshift), `chunk` bytes at a time.
fn pseudo_random_chunks(total: usize, chunk: usize, seed: u64) -> Vec<bytes::Bytes> {
    let mut state = seed | 1;
    let mut out = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        let mut buf = Vec::with_capacity(n);
        while buf.len() < n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.extend_from_slice(&state.to_le_bytes());
        }
        buf.truncate(n);
        out.push(bytes::Bytes::from(buf));
        left -= n;
    }
    out
}

/// A chunked request body (no Content-Length) from `chunks`.
fn chunked(chunks: Vec<bytes::Bytes>) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>)))
}

async fn put(gw: &Gateway, token: &str, key: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = gw.http.put(gw.url(&obj(key))).bearer_auth(token).body(body).send().await.expect("put");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get_bytes(gw: &Gateway, token: &str, key: &str) -> (u16, bytes::Bytes) {
    let resp = gw.http.get(gw.url(&obj(key))).bearer_auth(token).send().await.expect("get");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body"))
}

async fn status_of(gw: &Gateway, method: reqwest::Method, token: &str, key: &str) -> u16 {
    gw.http.request(method, gw.url(&obj(key))).bearer_auth(token).send().await.expect("request").status().as_u16()
}

/// Send a request with the path exactly as given (reqwest would resolve `..`).
async fn raw_status(gw: &Gateway, method: &str, path: &str, token: &str) -> u16 {
    let addr = gw.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// Open multipart uploads in a tenant's bucket (none may linger after a failed put).
async fn open_uploads(gw: &Gateway, tenant: &str) -> usize {
    let bucket = format!("{}{tenant}", gw.svc.config.s3.bucket_prefix);
    let out = gw.svc.s3.client().list_multipart_uploads().bucket(bucket).send().await.expect("list uploads");
    out.uploads().len()
}

async fn list(gw: &Gateway, token: &str, query: &str) -> (u16, Value) {
    gw.get(&format!("/v1/objects?{query}"), token).await
}

fn keys_of(page: &Value) -> Vec<String> {
    page["objects"].as_array().expect("objects").iter().map(|o| o["key"].as_str().expect("key").to_owned()).collect()
}

#[tokio::test]
async fn objects_round_trip_with_content_type_and_metadata() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("obj-rt")).await;
    let key = "docs/hello world.txt";

    let resp = gw
        .http
        .put(gw.url(&obj(key)))
        .bearer_auth(&t.service_key)
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-sluice-meta-owner", "ann")
        .header("x-sluice-meta-build_id", "42")
        .body("hello, objects")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    let put_etag = resp.headers()["etag"].to_str().expect("etag").to_owned();
    let body: Value = resp.json().await.expect("json");
    assert_eq!((body["key"].as_str(), body["size"].as_u64()), (Some(key), Some(14)), "{body}");
    assert_eq!(body["etag"].as_str(), Some(put_etag.as_str()));

    let resp = gw.http.get(gw.url(&obj(key))).bearer_auth(&t.service_key).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(h["content-length"], "14");
    assert_eq!(h["etag"].to_str().expect("etag"), put_etag);
    assert_eq!(h["x-sluice-meta-owner"], "ann");
    assert_eq!(h["x-sluice-meta-build_id"], "42");
    assert!(h.get("last-modified").is_some_and(|v| v.to_str().is_ok_and(|s| s.ends_with("GMT"))), "{h:?}");
    assert_eq!(resp.text().await.expect("text"), "hello, objects");

    let resp = gw.http.head(gw.url(&obj(key))).bearer_auth(&t.service_key).send().await.expect("head");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "14");
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.headers()["x-sluice-meta-owner"], "ann");
    assert_eq!(resp.headers()["etag"].to_str().expect("etag"), put_etag);
    assert!(resp.bytes().await.expect("body").is_empty());

    // No Content-Type given → application/octet-stream.
    assert_eq!(put(&gw, &t.service_key, "plain", "x").await.0, 200);
    let resp = gw.http.get(gw.url(&obj("plain"))).bearer_auth(&t.service_key).send().await.expect("get");
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");

    // Metadata rules.
    let big = "v".repeat(2100);
    for (name, value) in [("x-sluice-meta-big", big.as_str()), ("x-sluice-meta-a.b", "v")] {
        let resp = gw
            .http
            .put(gw.url(&obj("meta")))
            .bearer_auth(&t.service_key)
            .header(name, value)
            .body("x")
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), 400, "{name}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(error_code(&body), "bad_request");
    }

    // Delete, then it is gone; deleting again is still 204.
    assert_eq!(status_of(&gw, reqwest::Method::DELETE, &t.service_key, key).await, 204);
    let (status, body) = gw.get(&obj(key), &t.service_key).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    assert_eq!(status_of(&gw, reqwest::Method::HEAD, &t.service_key, key).await, 404);
    assert_eq!(status_of(&gw, reqwest::Method::DELETE, &t.service_key, key).await, 204);

    // Without a key: 401.
    let resp = gw.http.get(gw.url(&obj("plain"))).send().await.expect("get");
    assert_eq!(resp.status(), 401);

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_large_streamed_upload_uses_multipart_and_round_trips() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("obj-big")).await;
    let size = 20 << 20;
    let chunks = pseudo_random_chunks(size, 100_000, 7);
    let mut sha = Sha256::new();
    for c in &chunks {
        sha.update(c);
    }
    let want = hex::encode(sha.finalize());

    // Chunked transfer encoding: the gateway does not know the size up front.
    let (status, body) = put(&gw, &t.service_key, "big/blob.bin", chunked(chunks)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["size"].as_u64(), Some(size as u64));
    // 20 MiB in 8 MiB parts: a multipart ETag with 3 parts.
    assert!(body["etag"].as_str().is_some_and(|e| e.trim_matches('"').ends_with("-3")), "{body}");
    assert_eq!(open_uploads(&gw, &t.name).await, 0);

    let resp = gw.http.get(gw.url(&obj("big/blob.bin"))).bearer_auth(&t.service_key).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], size.to_string().as_str());
    let mut stream = resp.bytes_stream();
    let mut sha = Sha256::new();
    let mut got = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        got += chunk.len();
        sha.update(&chunk);
    }
    assert_eq!(got, size);
    assert_eq!(hex::encode(sha.finalize()), want);

    // Exactly one part's worth with a Content-Length: a single PutObject.
    let one_part = vec![7u8; 8 << 20];
    let (status, body) = put(&gw, &t.service_key, "big/one-part.bin", one_part).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["etag"].as_str().is_some_and(|e| !e.contains('-')), "{body}");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_ranges_and_conditionals() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("obj-cond")).await;
    let k = &t.service_key;
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let (status, body) = put(&gw, k, "r/data", data.clone()).await;
    assert_eq!(status, 200, "{body}");
    let etag = body["etag"].as_str().expect("etag").to_owned();

    let ranged = async |range: &str| {
        let resp = gw.http.get(gw.url(&obj("r/data"))).bearer_auth(k).header("range", range).send().await.expect("get");
        let status = resp.status().as_u16();
        let cr = resp.headers().get("content-range").map(|v| v.to_str().expect("ascii").to_owned());
        (status, cr, resp.bytes().await.expect("body"))
    };
    let (status, cr, body) = ranged("bytes=0-9").await;
    assert_eq!((status, cr.as_deref()), (206, Some("bytes 0-9/1000")));
    assert_eq!(&body[..], &data[..10]);
    let (status, cr, body) = ranged("bytes=990-").await;
    assert_eq!((status, cr.as_deref()), (206, Some("bytes 990-999/1000")));
    assert_eq!(&body[..], &data[990..]);
    let (status, cr, body) = ranged("bytes=-5").await;
    assert_eq!((status, cr.as_deref()), (206, Some("bytes 995-999/1000")));
    assert_eq!(&body[..], &data[995..]);
    // Unsatisfiable: past the end.
    let (status, cr, body) = ranged("bytes=2000-").await;
    assert_eq!((status, cr.as_deref()), (416, Some("bytes */1000")));
    let body: Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(error_code(&body), "range_not_satisfiable");
    // Invalid.
    for bad in ["bytes=9-1", "bytes=0-1,4-5", "pages=1-2", "bytes=x-"] {
        assert_eq!(ranged(bad).await.0, 416, "{bad}");
    }

    // If-None-Match: 304 on GET and HEAD when it matches; 200 otherwise.
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let resp = gw
            .http
            .request(method.clone(), gw.url(&obj("r/data")))
            .bearer_auth(k)
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 304, "{method}");
        assert_eq!(resp.headers().get("etag").and_then(|v| v.to_str().ok()), Some(etag.as_str()));
        assert!(resp.bytes().await.expect("body").is_empty());
        let resp = gw
            .http
            .request(method.clone(), gw.url(&obj("r/data")))
            .bearer_auth(k)
            .header("if-none-match", "\"something-else\"")
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 200, "{method}");
    }

    // If-Match on GET.
    let get_if_match = async |tag: &str| {
        gw.http
            .get(gw.url(&obj("r/data")))
            .bearer_auth(k)
            .header("if-match", tag)
            .send()
            .await
            .expect("get")
            .status()
            .as_u16()
    };
    assert_eq!(get_if_match(&etag).await, 200);
    assert_eq!(get_if_match("\"nope\"").await, 412);

    // If-Match on PUT: a mismatch (or a missing key) is 412 and writes nothing.
    let put_if_match = async |key: &str, tag: &str, body: &'static str| {
        let resp =
            gw.http.put(gw.url(&obj(key))).bearer_auth(k).header("if-match", tag).body(body).send().await.expect("put");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, body) = put_if_match("r/data", "\"stale\"", "overwrite").await;
    assert_eq!((status, error_code(&body)), (412, "precondition_failed"));
    assert_eq!(&get_bytes(&gw, k, "r/data").await.1[..], &data[..]);
    assert_eq!(put_if_match("r/missing", &etag, "x").await.0, 412);
    assert_eq!(get_bytes(&gw, k, "r/missing").await.0, 404);
    let (status, body) = put_if_match("r/data", &etag, "overwrite").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(&get_bytes(&gw, k, "r/data").await.1[..], b"overwrite");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_list_with_prefix_delimiter_and_pagination() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("obj-list")).await;
    let k = &t.service_key;
    let paged: Vec<String> = (1..=5).map(|i| format!("page/{i:02}")).collect();
    for key in paged.iter().map(String::as_str).chain(["tree/a", "tree/b/x", "tree/b/y", "tree/c/z", "other"]) {
        assert_eq!(put(&gw, k, key, format!("body of {key}")).await.0, 200, "{key}");
    }

    // limit=2 over 5 objects: pages of 2, 2 and 1; no duplicates, no gaps.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = "prefix=page/&limit=2".to_owned();
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={}", url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()));
        }
        let (status, page) = list(&gw, k, &q).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let keys = keys_of(&page);
        assert!(!keys.is_empty() && keys.len() <= 2, "{page}");
        seen.extend(keys);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, paged);

    // Objects carry size, etag and an RFC 3339 timestamp.
    let (_, page) = list(&gw, k, "prefix=page/01").await;
    let o = &page["objects"][0];
    assert_eq!(o["size"].as_u64(), Some("body of page/01".len() as u64), "{page}");
    assert!(o["etag"].is_string() && o["last_modified"].as_str().is_some_and(|s| s.contains('T')), "{page}");

    // Delimiter: direct children and "directories".
    let (status, page) = list(&gw, k, "prefix=tree/&delimiter=/").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(keys_of(&page), vec!["tree/a"]);
    assert_eq!(page["common_prefixes"], serde_json::json!(["tree/b/", "tree/c/"]));
    assert!(page["next_cursor"].is_null());

    // Default: everything (under the default limit of 100).
    let (_, page) = list(&gw, k, "").await;
    assert_eq!(keys_of(&page).len(), 10);

    for bad in ["limit=0", "limit=1001", "limit=abc", "bogus=1"] {
        let (status, body) = list(&gw, k, bad).await;
        assert_eq!((status, error_code(&body)), (400, "bad_request"), "{bad}");
    }

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_bad_keys_are_400_naming_the_rule() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("obj-keys")).await;
    let k = &t.service_key;
    let long = "k".repeat(1025);
    for (path_key, needle) in [
        ("a%2F..%2Fb", "'..'"),
        ("a%2F.%2Fb", "'.'"),
        ("a//b", "empty segment"),
        ("%2Fa", "empty segment"),
        ("a/", "empty segment"),
        ("a%0Ab", "control character"),
        (long.as_str(), "1025 bytes"),
        ("%FF%FE", "invalid key"),
    ] {
        for method in [reqwest::Method::PUT, reqwest::Method::GET, reqwest::Method::DELETE] {
            let resp = gw.http.request(method.clone(), gw.url(&obj(path_key))).bearer_auth(k).body("x").send().await;
            let resp = resp.expect("request");
            assert_eq!(resp.status(), 400, "{method} {path_key}");
            let body: Value = resp.json().await.expect("json");
            assert_eq!(error_code(&body), "bad_request");
            let msg = body["error"]["message"].as_str().unwrap_or("");
            assert!(msg.contains(needle), "{path_key}: {msg:?} lacks {needle:?}");
        }
    }
    // Literal dot segments (reqwest would resolve them, so send them raw).
    for path in ["/v1/objects/a/../b", "/v1/objects/../x", "/v1/objects/a/./b", "/v1/objects/.."] {
        assert_eq!(raw_status(&gw, "GET", path, k).await, 400, "{path}");
        assert_eq!(raw_status(&gw, "PUT", path, k).await, 400, "{path}");
    }
    // 1024 bytes is fine.
    assert_eq!(put(&gw, k, &"k".repeat(1024), "x").await.0, 200);

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_over_quota_are_413_and_store_nothing() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("obj-quota")).await;
    let k = &t.service_key;
    gw.set_quota(&t.name, "max_object_bytes", 1000).await;

    // Declared too large: refused before the body is read.
    let (status, body) = put(&gw, k, "q/declared", vec![1u8; 1001]).await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"), "{body}");
    // At the limit: fine.
    assert_eq!(put(&gw, k, "q/exact", vec![1u8; 1000]).await.0, 200);
    // Chunked, grows past the limit.
    let (status, body) = put(&gw, k, "q/chunked", chunked(pseudo_random_chunks(1500, 100, 3))).await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"), "{body}");
    assert_eq!(status_of(&gw, reqwest::Method::HEAD, k, "q/chunked").await, 404);

    // Past the limit after the first multipart part: the upload is aborted.
    gw.set_quota(&t.name, "max_object_bytes", 10 << 20).await;
    let (status, body) = put(&gw, k, "q/multipart", chunked(pseudo_random_chunks(12 << 20, 256 << 10, 5))).await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"), "{body}");
    assert_eq!(status_of(&gw, reqwest::Method::HEAD, k, "q/multipart").await, 404);
    assert_eq!(open_uploads(&gw, &t.name).await, 0);

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_client_disconnect_mid_upload_leaves_nothing() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("obj-gone")).await;
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "PUT /v1/objects/gone/blob HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n",
        t.service_key
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    // 10 MiB: more than one part, so a multipart upload is under way.
    for chunk in pseudo_random_chunks(10 << 20, 1 << 20, 9) {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.expect("chunk size");
        s.write_all(&chunk).await.expect("chunk");
        s.write_all(b"\r\n").await.expect("chunk end");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(s);

    // The abort runs when the gateway notices; give it a moment.
    let mut uploads = usize::MAX;
    for _ in 0..50 {
        uploads = open_uploads(&gw, &t.name).await;
        if uploads == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(uploads, 0, "a multipart upload was left open");
    assert_eq!(status_of(&gw, reqwest::Method::HEAD, &t.service_key, "gone/blob").await, 404);

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_are_isolated_between_tenants() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("obj-iso-a")).await;
    let b = gw.create_tenant(&unique("obj-iso-b")).await;
    let bucket_b = format!("{}{}", gw.svc.config.s3.bucket_prefix, b.name);
    let (ka, kb) = (&a.service_key, &b.service_key);
    assert_eq!(put(&gw, kb, "secret", "B's secret").await.0, 200);
    assert_eq!(put(&gw, kb, "dir/file", "B's file").await.0, 200);

    // Plain keys: A's bucket has no such objects.
    for key in ["secret", "dir/file"] {
        assert_eq!(get_bytes(&gw, ka, key).await.0, 404, "{key}");
        assert_eq!(status_of(&gw, reqwest::Method::HEAD, ka, key).await, 404, "{key}");
        assert_eq!(status_of(&gw, reqwest::Method::DELETE, ka, key).await, 204, "{key}");
    }
    // Traversal-looking keys are refused outright.
    let traversal = [
        format!("..%2F{bucket_b}%2Fsecret"),
        format!("x%2F..%2F..%2F{bucket_b}%2Fsecret"),
        format!("%2F..%2F{bucket_b}%2Fsecret"),
    ];
    for key in &traversal {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD, reqwest::Method::PUT, reqwest::Method::DELETE] {
            assert_eq!(status_of(&gw, method.clone(), ka, key).await, 400, "{method} {key}");
        }
    }
    for path in [format!("/v1/objects/../{bucket_b}/secret"), format!("/v1/objects/x/../../../{bucket_b}/secret")] {
        for method in ["GET", "PUT", "DELETE", "HEAD"] {
            assert_eq!(raw_status(&gw, method, &path, ka).await, 400, "{method} {path}");
        }
    }
    // B's bucket name inside a key is just a key in A's bucket.
    let lookalike = format!("{bucket_b}/secret");
    assert_eq!(get_bytes(&gw, ka, &lookalike).await.0, 404);
    assert_eq!(put(&gw, ka, &lookalike, "A's lookalike").await.0, 200);
    assert_eq!(status_of(&gw, reqwest::Method::DELETE, ka, &lookalike).await, 204);
    // A overwriting "secret" writes A's own object.
    assert_eq!(put(&gw, ka, "secret", "A's secret").await.0, 200);
    assert_eq!(&get_bytes(&gw, ka, "secret").await.1[..], b"A's secret");

    // A's listing shows only A's objects, whatever the prefix.
    for q in ["", "prefix=dir/", &format!("prefix={bucket_b}")] {
        let (status, page) = list(&gw, ka, q).await;
        assert_eq!(status, 200);
        let keys: BTreeSet<String> = keys_of(&page).into_iter().collect();
        assert!(keys.iter().all(|k| k == "secret"), "{q}: {keys:?}");
    }

    // B's objects are intact.
    assert_eq!(&get_bytes(&gw, kb, "secret").await.1[..], b"B's secret");
    assert_eq!(&get_bytes(&gw, kb, "dir/file").await.1[..], b"B's file");
    let (_, page) = list(&gw, kb, "").await;
    assert_eq!(keys_of(&page), vec!["dir/file", "secret"]);

    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_store_unreachable_is_503_with_retry_after() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("obj-down")).await;
    // A second gateway on the same control plane whose object store is down.
    let mut cfg = config();
    cfg.s3.endpoint = "http://127.0.0.1:1".into();
    let down = Gateway::start_with(cfg).await;
    for (method, body) in [(reqwest::Method::GET, ""), (reqwest::Method::PUT, "x")] {
        let resp =
            down.http.request(method.clone(), down.url(&obj("k"))).bearer_auth(&t.service_key).body(body).send().await;
        let resp = resp.expect("request");
        assert_eq!(resp.status(), 503, "{method}");
        assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        let body: Value = resp.json().await.expect("json");
        assert_eq!(error_code(&body), "upstream_unavailable");
    }
    let (status, _) = list(&down, &t.service_key, "").await;
    assert_eq!(status, 503);
    down.stop().await;

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
