//! The S3 door (`server.s3_addr`) with the AWS SDK for Rust as the client,
//! against the real stack: per-tenant access keys (create, list, revoke),
//! SigV4 header and presigned auth, the object operations, metadata shared
//! with `/v1/objects`, the bucket/read-only/prefix limits and quotas.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use serde_json::{Value, json};

use crate::support::{Gateway, TestTenant, unique};

/// Create an S3 access key for `t` over HTTP with its admin key.
pub(crate) async fn create_key(gw: &Gateway, t: &TestTenant, body: Value) -> Value {
    gw.create_s3_key(t, body).await
}

fn config_for(gw: &Gateway, access_key: &str, secret: &str) -> aws_sdk_s3::config::Builder {
    let addr = gw.s3_addr.expect("the S3 door is on in tests");
    aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(Credentials::new(access_key, secret, None, None, "test"))
        .force_path_style(true)
}

pub(crate) fn client_for(gw: &Gateway, access_key: &str, secret: &str) -> Client {
    Client::from_conf(config_for(gw, access_key, secret).build())
}

pub(crate) fn client(gw: &Gateway, key: &Value) -> Client {
    client_for(gw, key["access_key_id"].as_str().expect("id"), key["secret_access_key"].as_str().expect("secret"))
}

/// (HTTP status, S3 error code) of a failed call.
pub(crate) fn failure<E: ProvideErrorMetadata, T>(
    r: Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> (u16, String) {
    let Err(e) = r else { panic!("expected the call to fail") };
    let status = e.raw_response().map_or(0, |r| r.status().as_u16());
    (status, e.code().unwrap_or_default().to_owned())
}

pub(crate) async fn body_text(out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> String {
    let bytes = out.body.collect().await.expect("body").into_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn credentials_create_list_revoke() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3c")).await;
    let key = create_key(&gw, &t, json!({ "label": "ci" })).await;
    let id = key["access_key_id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 20, "{key}");
    assert_eq!(key["secret_access_key"].as_str().expect("secret").len(), 40);
    assert_eq!(key["bucket"], t.name.as_str());
    assert!(key["endpoint"].as_str().expect("endpoint").starts_with("http://"));

    // A service key may not manage S3 keys.
    let resp = gw.http.get(gw.url("/v1/s3/credentials")).bearer_auth(&t.service_key).send().await.expect("list");
    assert_eq!(resp.status(), 403);
    let (status, list) = gw.get("/v1/s3/credentials", &t.admin_key).await;
    assert_eq!(status, 200);
    let listed = &list["credentials"][0];
    assert_eq!(listed["access_key_id"], id.as_str());
    assert!(listed.get("secret_access_key").is_none(), "the secret is shown once: {listed}");

    let s3 = client(&gw, &key);
    let buckets = s3.list_buckets().send().await.expect("list buckets");
    let names: Vec<_> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, [t.name.as_str()]);
    s3.head_bucket().bucket(&t.name).send().await.expect("head bucket");
    s3.get_bucket_location().bucket(&t.name).send().await.expect("bucket location");

    let resp =
        gw.http.delete(gw.url(&format!("/v1/s3/credentials/{id}"))).bearer_auth(&t.admin_key).send().await.expect("rm");
    assert_eq!(resp.status(), 204);
    // Revoked: refused at once.
    assert_eq!(failure(s3.list_buckets().send().await), (403, "InvalidAccessKeyId".into()));
    let (_, list) = gw.get("/v1/s3/credentials", &t.admin_key).await;
    assert!(list["credentials"][0]["revoked_at"].is_string(), "{list}");
    // Unknown ids are "not found"; the audit log has both actions.
    let resp = gw.http.delete(gw.url("/v1/s3/credentials/SLUNOSUCHKEY00000000")).bearer_auth(&t.admin_key).send();
    assert_eq!(resp.await.expect("rm").status(), 404);
    let (_, audit) = gw.get("/v1/audit", &t.admin_key).await;
    let actions: Vec<_> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"s3_credential.create") && actions.contains(&"s3_credential.revoke"), "{actions:?}");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn wrong_secret_and_unknown_key_are_refused() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3w")).await;
    let key = create_key(&gw, &t, json!({})).await;
    let id = key["access_key_id"].as_str().expect("id");
    let wrong = client_for(&gw, id, &"x".repeat(40));
    assert_eq!(failure(wrong.list_buckets().send().await), (403, "SignatureDoesNotMatch".into()));
    let unknown = client_for(&gw, "SLUAAAAAAAAAAAAAAAAA", &"x".repeat(40));
    assert_eq!(failure(unknown.list_objects_v2().bucket(&t.name).send().await), (403, "InvalidAccessKeyId".into()));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn objects_round_trip_list_and_range() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3o")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let b = t.name.as_str();

    let put = s3
        .put_object()
        .bucket(b)
        .key("docs/a.txt")
        .content_type("text/plain")
        .body(ByteStream::from_static(b"hello, s3 door"))
        .send()
        .await
        .expect("put");
    let etag = put.e_tag().expect("etag").to_owned();
    let got = s3.get_object().bucket(b).key("docs/a.txt").send().await.expect("get");
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(got.e_tag(), Some(etag.as_str()));
    assert_eq!(body_text(got).await, "hello, s3 door");
    let head = s3.head_object().bucket(b).key("docs/a.txt").send().await.expect("head");
    assert_eq!(head.content_length(), Some(14));

    // Range.
    let part = s3.get_object().bucket(b).key("docs/a.txt").range("bytes=7-8").send().await.expect("range");
    assert_eq!(part.content_range(), Some("bytes 7-8/14"));
    assert_eq!(body_text(part).await, "s3");
    // Conditionals.
    let (status, _) = failure(s3.get_object().bucket(b).key("docs/a.txt").if_none_match(&etag).send().await);
    assert_eq!(status, 304);
    let (status, code) = failure(s3.get_object().bucket(b).key("docs/a.txt").if_match("\"nope\"").send().await);
    assert_eq!((status, code.as_str()), (412, "PreconditionFailed"));
    assert_eq!(failure(s3.get_object().bucket(b).key("docs/none").send().await), (404, "NoSuchKey".into()));

    // Listing: prefix, delimiter, pagination, start-after.
    for k in ["docs/b.txt", "docs/c.txt", "docs/sub/d.txt", "top.txt"] {
        s3.put_object().bucket(b).key(k).body(ByteStream::from_static(b"x")).send().await.expect("put");
    }
    let l = s3.list_objects_v2().bucket(b).prefix("docs/").delimiter("/").send().await.expect("list");
    let keys: Vec<_> = l.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["docs/a.txt", "docs/b.txt", "docs/c.txt"]);
    let prefixes: Vec<_> = l.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(prefixes, ["docs/sub/"]);
    assert_eq!(l.key_count(), Some(4));

    let mut all = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(b)
            .max_keys(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("page");
        assert!(page.contents().len() <= 2);
        all.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        if page.is_truncated() != Some(true) {
            break;
        }
        token = page.next_continuation_token().map(str::to_owned);
        assert!(token.is_some());
    }
    assert_eq!(all, ["docs/a.txt", "docs/b.txt", "docs/c.txt", "docs/sub/d.txt", "top.txt"]);
    let after = s3.list_objects_v2().bucket(b).start_after("docs/c.txt").send().await.expect("start-after");
    let keys: Vec<_> = after.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["docs/sub/d.txt", "top.txt"]);

    let (_, usage) = gw.get("/v1/usage", &t.service_key).await;
    assert_eq!(usage["object_count"], 5, "{usage}");

    // Delete one, then several at once.
    s3.delete_object().bucket(b).key("top.txt").send().await.expect("delete");
    assert_eq!(failure(s3.head_object().bucket(b).key("top.txt").send().await).0, 404);
    let ids = ["docs/a.txt", "docs/b.txt", "docs/c.txt", "docs/sub/d.txt", "docs/never-was"]
        .iter()
        .map(|k| ObjectIdentifier::builder().key(*k).build().expect("id"))
        .collect::<Vec<_>>();
    let out = s3
        .delete_objects()
        .bucket(b)
        .delete(Delete::builder().set_objects(Some(ids)).build().expect("delete"))
        .send()
        .await
        .expect("delete objects");
    assert_eq!(out.deleted().len(), 5, "{out:?}");
    assert!(out.errors().is_empty());
    let l = s3.list_objects_v2().bucket(b).send().await.expect("list");
    assert!(l.contents().is_empty(), "{l:?}");
    // Usage counts went up and back down with the writes.
    let (_, usage) = gw.get("/v1/usage", &t.service_key).await;
    assert_eq!(usage["object_count"], 0, "{usage}");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn metadata_is_shared_with_the_http_door() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3m")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let b = t.name.as_str();

    // Written over S3, read over HTTP.
    s3.put_object()
        .bucket(b)
        .key("m/one")
        .metadata("owner", "ann")
        .body(ByteStream::from_static(b"1"))
        .send()
        .await
        .expect("put");
    let resp = gw.http.get(gw.url("/v1/objects/m/one")).bearer_auth(&t.service_key).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("x-sluice-meta-owner").and_then(|v| v.to_str().ok()), Some("ann"));

    // Written over HTTP, read over S3.
    let resp = gw
        .http
        .put(gw.url("/v1/objects/m/two"))
        .bearer_auth(&t.service_key)
        .header("x-sluice-meta-team", "blue")
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    let head = s3.head_object().bucket(b).key("m/two").send().await.expect("head");
    assert_eq!(head.metadata().and_then(|m| m.get("team")).map(String::as_str), Some("blue"));
    assert_eq!(head.content_type(), Some("text/csv"));
    let got = s3.get_object().bucket(b).key("m/two").send().await.expect("get");
    assert_eq!(got.metadata().and_then(|m| m.get("team")).map(String::as_str), Some("blue"));
    assert_eq!(body_text(got).await, "a,b");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn bucket_read_only_and_prefix_limits() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("s3a")).await;
    let other = gw.create_tenant(&unique("s3b")).await;
    let s3 = client(&gw, &create_key(&gw, &a, json!({})).await);

    // Another tenant's bucket (which exists) is out of reach.
    let denied = (403, "AccessDenied".to_owned());
    assert_eq!(failure(s3.list_objects_v2().bucket(&other.name).send().await), denied);
    let put = s3.put_object().bucket(&other.name).key("k").body(ByteStream::from_static(b"x")).send().await;
    assert_eq!(failure(put), denied);

    // A read-only key reads, never writes.
    s3.put_object().bucket(&a.name).key("p/k").body(ByteStream::from_static(b"x")).send().await.expect("put");
    let ro = client(&gw, &create_key(&gw, &a, json!({ "read_only": true })).await);
    ro.get_object().bucket(&a.name).key("p/k").send().await.expect("read-only reads");
    let put = ro.put_object().bucket(&a.name).key("p/k2").body(ByteStream::from_static(b"x")).send().await;
    assert_eq!(failure(put), denied);
    assert_eq!(failure(ro.delete_object().bucket(&a.name).key("p/k").send().await), denied);

    // A prefix-limited key stays inside its prefix.
    let pk = client(&gw, &create_key(&gw, &a, json!({ "prefix": "p/" })).await);
    pk.put_object().bucket(&a.name).key("p/in").body(ByteStream::from_static(b"x")).send().await.expect("inside");
    let put = pk.put_object().bucket(&a.name).key("q/out").body(ByteStream::from_static(b"x")).send().await;
    assert_eq!(failure(put), denied);
    assert_eq!(failure(pk.list_objects_v2().bucket(&a.name).send().await), denied);
    let l = pk.list_objects_v2().bucket(&a.name).prefix("p/").send().await.expect("list inside");
    assert_eq!(l.contents().len(), 2);

    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&other.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn presigned_get_and_expired() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3p")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    s3.put_object()
        .bucket(&t.name)
        .key("shared.txt")
        .body(ByteStream::from_static(b"presigned"))
        .send()
        .await
        .expect("put");

    let cfg = PresigningConfig::expires_in(Duration::from_secs(300)).expect("presign config");
    let req = s3.get_object().bucket(&t.name).key("shared.txt").presigned(cfg).await.expect("presign");
    let resp = gw.http.get(req.uri()).send().await.expect("presigned get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("text"), "presigned");

    let past = SystemTime::now() - Duration::from_secs(3600);
    let cfg = PresigningConfig::builder().start_time(past).expires_in(Duration::from_secs(60)).build().expect("cfg");
    let req = s3.get_object().bucket(&t.name).key("shared.txt").presigned(cfg).await.expect("presign");
    let resp = gw.http.get(req.uri()).send().await.expect("expired get");
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.expect("text");
    assert!(text.contains("<Code>AccessDenied</Code>") || text.contains("Expired"), "{text}");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn object_size_quota_is_entity_too_large() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3q")).await;
    gw.set_quota(&t.name, "max_object_bytes", 1000).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let big = s3.put_object().bucket(&t.name).key("big").body(ByteStream::from(vec![7u8; 2000])).send().await;
    assert_eq!(failure(big), (400, "EntityTooLarge".into()));
    s3.put_object().bucket(&t.name).key("small").body(ByteStream::from(vec![7u8; 1000])).send().await.expect("fits");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn unsupported_operations_are_not_implemented() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3n")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    assert_eq!(failure(s3.get_bucket_versioning().bucket(&t.name).send().await), (501, "NotImplemented".into()));
    let policy = s3.put_bucket_policy().bucket(&t.name).policy("{}").send().await;
    assert_eq!(failure(policy), (501, "NotImplemented".into()));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn cli_creates_lists_and_revokes_credentials() {
    use crate::cli::sluice;
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3cli")).await;
    let (ok, key, err) =
        sluice(&["s3", "credentials", "create", "--tenant", &t.name, "--read-only", "--prefix", "in/"]).await;
    assert!(ok, "{err}");
    for field in ["access_key_id", "secret_access_key", "endpoint", "bucket"] {
        assert!(key[field].is_string(), "{field} in {key}");
    }
    assert_eq!(key["read_only"], true);
    assert_eq!(key["prefix"], "in/");
    let id = key["access_key_id"].as_str().expect("id").to_owned();
    let s3 = client(&gw, &key);
    s3.list_objects_v2().bucket(&t.name).prefix("in/").send().await.expect("the CLI's key works");

    let (ok, list, err) = sluice(&["s3", "credentials", "list", "--tenant", &t.name]).await;
    assert!(ok, "{err}");
    assert_eq!(list["credentials"][0]["access_key_id"], id.as_str());
    let (ok, _, err) = sluice(&["s3", "credentials", "revoke", "--tenant", &t.name, &id]).await;
    assert!(ok, "{err}");
    let listed = s3.list_objects_v2().bucket(&t.name).prefix("in/").send().await;
    assert_eq!(failure(listed), (403, "InvalidAccessKeyId".into()));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn copy_object_within_the_tenant() {
    use aws_sdk_s3::types::MetadataDirective;
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3cp")).await;
    let other = gw.create_tenant(&unique("s3cq")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let b = t.name.as_str();
    s3.put_object()
        .bucket(b)
        .key("src.txt")
        .content_type("text/plain")
        .metadata("owner", "ann")
        .body(ByteStream::from_static(b"copy me"))
        .send()
        .await
        .expect("put");

    // COPY (the default) keeps the content type and metadata.
    let out = s3.copy_object().bucket(b).key("dst/one.txt").copy_source(format!("{b}/src.txt")).send().await;
    let out = out.expect("copy");
    assert!(out.copy_object_result().and_then(|r| r.e_tag()).is_some(), "{out:?}");
    let got = s3.get_object().bucket(b).key("dst/one.txt").send().await.expect("get copy");
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(got.metadata().and_then(|m| m.get("owner")).map(String::as_str), Some("ann"));
    assert_eq!(body_text(got).await, "copy me");

    // REPLACE takes the request's.
    s3.copy_object()
        .bucket(b)
        .key("dst/two.txt")
        .copy_source(format!("{b}/src.txt"))
        .metadata_directive(MetadataDirective::Replace)
        .content_type("application/x-new")
        .metadata("team", "red")
        .send()
        .await
        .expect("copy replace");
    let head = s3.head_object().bucket(b).key("dst/two.txt").send().await.expect("head");
    assert_eq!(head.content_type(), Some("application/x-new"));
    let meta = head.metadata().expect("metadata");
    assert_eq!((meta.get("team").map(String::as_str), meta.get("owner")), (Some("red"), None));
    let (_, usage) = gw.get("/v1/usage", &t.service_key).await;
    assert_eq!(usage["object_count"], 3, "{usage}");

    // Onto itself without REPLACE, a missing source, another tenant's bucket.
    let same = s3.copy_object().bucket(b).key("src.txt").copy_source(format!("{b}/src.txt")).send().await;
    assert_eq!(failure(same), (400, "InvalidRequest".into()));
    let missing = s3.copy_object().bucket(b).key("x").copy_source(format!("{b}/nope")).send().await;
    assert_eq!(failure(missing), (404, "NoSuchKey".into()));
    let foreign = s3.copy_object().bucket(b).key("x").copy_source(format!("{}/src.txt", other.name)).send().await;
    assert_eq!(failure(foreign), (403, "AccessDenied".into()));
    let ro = client(&gw, &create_key(&gw, &t, json!({ "read_only": true })).await);
    let denied = ro.copy_object().bucket(b).key("y").copy_source(format!("{b}/src.txt")).send().await;
    assert_eq!(failure(denied), (403, "AccessDenied".into()));

    gw.delete_tenant(&t.name).await;
    gw.delete_tenant(&other.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn keys_with_special_characters_list_as_they_are() {
    use aws_sdk_s3::types::EncodingType;
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3k")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let key = "odd/a b+c%d&é.txt";
    s3.put_object().bucket(&t.name).key(key).body(ByteStream::from_static(b"x")).send().await.expect("put");
    // Asked for URL encoding (as aws-cli does), the door answers keys as they
    // are and names no encoding, so the client decodes nothing.
    let l = s3.list_objects_v2().bucket(&t.name).encoding_type(EncodingType::Url).send().await.expect("list");
    let keys: Vec<_> = l.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, [key]);
    let got = s3.get_object().bucket(&t.name).key(key).send().await.expect("get");
    assert_eq!(body_text(got).await, "x");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// The policy plugin sees the S3 door and the S3 operation (`origin`): a
/// policy denying `DeleteObject` and `UploadPart` on the S3 door refuses those
/// (AccessDenied, its reason in the message) and nothing else; the same
/// delete over `/v1/objects` is not an S3 operation and goes through.
#[tokio::test]
async fn the_policy_sees_the_s3_operation() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3pol")).await;
    let resp = gw
        .http
        .put(gw.url("/v1/plugins/policy?activate=true"))
        .bearer_auth(&t.admin_key)
        .header("x-sluice-plugin-config", r#"{"deny": ["DeleteObject", "UploadPart"]}"#)
        .body(crate::support::plugin_wasm("policy_s3_ops"))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let b = t.name.as_str();
    s3.put_object().bucket(b).key("k").body(ByteStream::from_static(b"v")).send().await.expect("PutObject allowed");
    let got = s3.get_object().bucket(b).key("k").send().await.expect("GetObject allowed");
    assert_eq!(body_text(got).await, "v");
    let denied = s3.delete_object().bucket(b).key("k").send().await;
    let Err(e) = &denied else { panic!("DeleteObject must be denied") };
    let message = e.message().unwrap_or_default();
    assert!(message.contains("DeleteObject is not allowed on the s3 door (object.delete of k)"), "{message}");
    assert_eq!(failure(denied), (403, "AccessDenied".to_owned()));
    let up = s3.create_multipart_upload().bucket(b).key("big").send().await.expect("CreateMultipartUpload allowed");
    let id = up.upload_id().expect("upload id");
    let part = s3
        .upload_part()
        .bucket(b)
        .key("big")
        .upload_id(id)
        .part_number(1)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(failure(part), (403, "AccessDenied".to_owned()));
    s3.abort_multipart_upload().bucket(b).key("big").upload_id(id).send().await.expect("AbortMultipartUpload allowed");
    // The HTTP door's delete is `object.delete` from `http`: allowed.
    let r = gw.http.delete(gw.url("/v1/objects/k")).bearer_auth(&t.service_key).send().await.expect("delete");
    assert_eq!(r.status(), 204);
    // The policy test endpoint takes the door and the S3 operation too.
    let (s, v) = crate::plugins::post(
        &gw,
        &t.admin_key,
        "/v1/plugins/policy/test",
        json!({ "input": { "operation": "object.delete", "object_key": "k", "door": "s3", "s3_operation": "DeleteObject" } }),
    )
    .await;
    assert_eq!((s, &v["output"]["decision"]), (200, &json!("deny")), "{v}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// A client that does not retry (the SDK retries `SlowDown` by default).
fn client_no_retry(gw: &Gateway, key: &Value) -> Client {
    let (id, secret) = (key["access_key_id"].as_str().expect("id"), key["secret_access_key"].as_str().expect("secret"));
    let retry = aws_sdk_s3::config::retry::RetryConfig::disabled();
    Client::from_conf(config_for(gw, id, secret).retry_config(retry).build())
}

async fn set_quotas(gw: &Gateway, t: &TestTenant, quotas: Value) {
    let resp = gw
        .http
        .put(gw.url(&format!("/admin/v1/tenants/{}/quotas", t.name)))
        .bearer_auth(gw.operator_token())
        .json(&quotas)
        .send()
        .await
        .expect("set quotas");
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
}

#[tokio::test]
async fn requests_and_downloads_are_rate_limited_like_on_the_other_doors() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3rl")).await;
    let key = create_key(&gw, &t, json!({})).await;
    let s3 = client_no_retry(&gw, &key);
    let b = t.name.as_str();

    // Requests: 50 per second, burst 100. S3 requests are leased (5 at a
    // time at these limits) and every admitted one is still counted once.
    // (Set before the first S3 request: units leased under the old limits
    // would be spent first.)
    set_quotas(&gw, &t, json!({ "http_rps": 50, "http_burst": 100 })).await;
    let started = std::time::Instant::now();
    s3.put_object().bucket(b).key("k").body(ByteStream::from(vec![7u8; 40_000])).send().await.expect("put");
    let (mut ok, mut slow) = (1u32, 0u32);
    for _ in 0..400 {
        match s3.list_objects_v2().bucket(b).max_keys(1).send().await {
            Ok(_) => ok += 1,
            r => {
                assert_eq!(failure(r), (503, "SlowDown".to_owned()));
                slow += 1;
            }
        }
    }
    let allowed = 100.0 + 50.0 * started.elapsed().as_secs_f64();
    assert!(slow > 0, "the limit was reached: {ok} admitted");
    assert!(f64::from(ok) <= allowed + 1.0, "{ok} admitted, at most {allowed:.0} allowed");
    assert!(f64::from(ok) >= allowed - 10.0, "{ok} admitted of {allowed:.0} allowed: at most two leases unused");

    // The bucket's clock runs ahead after that (GCRA); let it catch up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Downloads: 100 kB per second (burst one second); each 40 kB GET is
    // charged after it is sent, and a bucket in debt refuses the next ones.
    set_quotas(&gw, &t, json!({ "http_rps": 10_000, "http_burst": 10_000, "bytes_out_per_sec": 100_000 })).await;
    let (mut ok, mut slow) = (0u32, 0u32);
    for _ in 0..10 {
        match s3.get_object().bucket(b).key("k").send().await {
            Ok(out) => {
                assert_eq!(out.body.collect().await.expect("body").into_bytes().len(), 40_000);
                ok += 1;
            }
            r => {
                assert_eq!(failure(r), (503, "SlowDown".to_owned()));
                slow += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slow > 0 && (3..=6).contains(&ok), "{ok} downloads of 40 kB admitted against 100 kB/s in 0.3 s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s3.get_object().bucket(b).key("k").send().await.expect("the debt is paid after a second");
    gw.delete_tenant(&t.name).await;
}
