//! The S3 door's multipart uploads, ListObjects v1, date conditions and
//! checksums, with the AWS SDK for Rust as the client against the real stack.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::s3_door::{body_text, client, create_key, failure};
use crate::support::{Gateway, unique};

const MIB: usize = 1 << 20;

/// Deterministic, incompressible-enough bytes.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8)).collect()
}

async fn object_usage(gw: &Gateway, key: &str) -> (i64, i64) {
    let (_, u) = gw.get("/v1/usage", key).await;
    let objects = u["resources"].as_array().and_then(|r| r.iter().find(|r| r["resource"] == "objects"));
    (objects.and_then(|o| o["used"].as_i64()).unwrap_or(-1), u["object_count"].as_i64().unwrap_or(-1))
}

async fn create(s3: &Client, b: &str, key: &str) -> String {
    let out = s3.create_multipart_upload().bucket(b).key(key).send().await.expect("create");
    out.upload_id().expect("upload id").to_owned()
}

async fn upload_part(s3: &Client, b: &str, key: &str, id: &str, n: i32, data: Vec<u8>) -> CompletedPart {
    let out = s3
        .upload_part()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .part_number(n)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap_or_else(|e| panic!("upload part {n}: {e:?}"));
    CompletedPart::builder().part_number(n).set_e_tag(out.e_tag().map(str::to_owned)).build()
}

#[tokio::test]
async fn a_100_mib_multipart_upload_round_trips() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3mp")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let b = t.name.as_str();
    let key = "models/big.bin";

    let created = s3
        .create_multipart_upload()
        .bucket(b)
        .key(key)
        .content_type("application/x-model")
        .metadata("stage", "prod")
        .send()
        .await
        .expect("create");
    let id = created.upload_id().expect("upload id").to_owned();

    // 12 parts of 8 MiB and one of 4 MiB: 100 MiB.
    let mut parts = Vec::new();
    let mut whole = Sha256::new();
    for n in 1..=13 {
        let len = if n == 13 { 4 * MIB } else { 8 * MIB };
        let data = bytes(len, n as u8);
        whole.update(&data);
        parts.push(upload_part(&s3, b, key, &id, n, data).await);
    }
    // Parts count in the tenant's usage while the upload is open.
    assert_eq!(object_usage(&gw, &t.service_key).await, (100 * MIB as i64, 0));

    let listed = s3.list_parts().bucket(b).key(key).upload_id(&id).max_parts(5).send().await.expect("list parts");
    assert_eq!(listed.parts().len(), 5);
    assert_eq!(listed.is_truncated(), Some(true));
    assert_eq!(listed.next_part_number_marker(), Some("5"));
    let rest = s3.list_parts().bucket(b).key(key).upload_id(&id).part_number_marker("5").send().await.expect("rest");
    assert_eq!(rest.parts().len(), 8);
    assert_eq!(rest.parts().last().and_then(|p| p.size()), Some(4 * MIB as i64));
    let uploads = s3.list_multipart_uploads().bucket(b).send().await.expect("list uploads");
    let ids: Vec<_> = uploads.uploads().iter().filter_map(|u| u.upload_id()).collect();
    assert_eq!(ids, [id.as_str()]);

    let done = s3
        .complete_multipart_upload()
        .bucket(b)
        .key(key)
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .expect("complete");
    let etag = done.e_tag().expect("etag").to_owned();
    assert!(etag.ends_with("-13\""), "{etag}");

    let got = s3.get_object().bucket(b).key(key).send().await.expect("get");
    assert_eq!(got.content_length(), Some(100 * MIB as i64));
    assert_eq!(got.content_type(), Some("application/x-model"));
    assert_eq!(got.metadata().and_then(|m| m.get("stage")).map(String::as_str), Some("prod"));
    let body = got.body.collect().await.expect("body").into_bytes();
    assert_eq!(hex::encode(Sha256::digest(&body)), hex::encode(whole.finalize()));
    // The same object on /v1/objects, metadata included.
    let resp =
        gw.http.head(gw.url(&format!("/v1/objects/{key}"))).bearer_auth(&t.service_key).send().await.expect("head");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sluice-meta-stage"], "prod");
    // Counted once, as one object; the upload is gone.
    assert_eq!(object_usage(&gw, &t.service_key).await, (100 * MIB as i64, 1));
    let uploads = s3.list_multipart_uploads().bucket(b).send().await.expect("list uploads");
    assert!(uploads.uploads().is_empty());
    let again = s3.list_parts().bucket(b).key(key).upload_id(&id).send().await;
    assert_eq!(failure(again), (404, "NoSuchUpload".into()));

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn multipart_errors_abort_and_part_copy() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3me")).await;
    let other = gw.create_tenant(&unique("s3mo")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let s3_other = client(&gw, &create_key(&gw, &other, json!({})).await);
    let b = t.name.as_str();

    // An upload id that does not exist, or is another tenant's.
    let bogus =
        s3.upload_part().bucket(b).key("k").upload_id("nope").part_number(1).body(ByteStream::from_static(b"x"));
    assert_eq!(failure(bogus.send().await), (404, "NoSuchUpload".into()));
    let id = s3.create_multipart_upload().bucket(b).key("k").send().await.expect("create");
    let id = id.upload_id().expect("id").to_owned();
    let theirs = s3_other
        .upload_part()
        .bucket(other.name.as_str())
        .key("k")
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(failure(theirs), (404, "NoSuchUpload".into()));
    let theirs = s3_other.abort_multipart_upload().bucket(other.name.as_str()).key("k").upload_id(&id).send().await;
    assert_eq!(failure(theirs), (404, "NoSuchUpload".into()));
    let bad_number =
        s3.upload_part().bucket(b).key("k").upload_id(&id).part_number(10_001).body(ByteStream::from_static(b"x"));
    assert_eq!(failure(bad_number.send().await).1, "InvalidArgument");

    // Part 1 from a copy of a range of an existing object, part 2 uploaded.
    let src = bytes(6 * MIB, 9);
    s3.put_object().bucket(b).key("src.bin").body(ByteStream::from(src.clone())).send().await.expect("put src");
    let copied = s3
        .upload_part_copy()
        .bucket(b)
        .key("k")
        .upload_id(&id)
        .part_number(1)
        .copy_source(format!("{b}/src.bin"))
        .copy_source_range(format!("bytes=0-{}", 5 * MIB - 1))
        .send()
        .await
        .expect("part copy");
    let p1 = CompletedPart::builder()
        .part_number(1)
        .set_e_tag(copied.copy_part_result().and_then(|r| r.e_tag()).map(str::to_owned))
        .build();
    let p2 = upload_part(&s3, b, "k", &id, 2, b"tail".to_vec()).await;
    // Another tenant's object is not a copy source.
    s3_other
        .put_object()
        .bucket(other.name.as_str())
        .key("theirs")
        .body(ByteStream::from_static(b"t"))
        .send()
        .await
        .expect("put");
    let foreign = s3
        .upload_part_copy()
        .bucket(b)
        .key("k")
        .upload_id(&id)
        .part_number(3)
        .copy_source(format!("{}/theirs", other.name))
        .send()
        .await;
    assert_eq!(failure(foreign), (403, "AccessDenied".into()));
    let outside = s3
        .upload_part_copy()
        .bucket(b)
        .key("k")
        .upload_id(&id)
        .part_number(3)
        .copy_source(format!("{b}/src.bin"))
        .copy_source_range(format!("bytes=0-{}", 6 * MIB))
        .send()
        .await;
    assert_eq!(failure(outside).1, "InvalidRange");

    // Wrong ETag, wrong order.
    let wrong = CompletedPart::builder().part_number(2).e_tag("\"0123\"").build();
    let done = |parts: Vec<CompletedPart>| {
        s3.complete_multipart_upload()
            .bucket(b)
            .key("k")
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
    };
    assert_eq!(failure(done(vec![p1.clone(), wrong]).await), (400, "InvalidPart".into()));
    assert_eq!(failure(done(vec![p2.clone(), p1.clone()]).await), (400, "InvalidPartOrder".into()));
    done(vec![p1, p2]).await.expect("complete");
    let got = s3.get_object().bucket(b).key("k").send().await.expect("get").body.collect().await.expect("body");
    let mut expected = src[..5 * MIB].to_vec();
    expected.extend_from_slice(b"tail");
    assert!(got.into_bytes() == expected, "part copy + part");

    // Abort frees the parts' bytes.
    let before = object_usage(&gw, &t.service_key).await;
    let id2 = create(&s3, b, "gone").await;
    upload_part(&s3, b, "gone", &id2, 1, bytes(MIB, 1)).await;
    assert_eq!(object_usage(&gw, &t.service_key).await, (before.0 + MIB as i64, before.1));
    s3.abort_multipart_upload().bucket(b).key("gone").upload_id(&id2).send().await.expect("abort");
    assert_eq!(object_usage(&gw, &t.service_key).await, before);
    let after =
        s3.upload_part().bucket(b).key("gone").upload_id(&id2).part_number(2).body(ByteStream::from_static(b"x"));
    assert_eq!(failure(after.send().await), (404, "NoSuchUpload".into()));

    // A read-only key cannot start one.
    let ro = client(&gw, &create_key(&gw, &t, json!({ "read_only": true })).await);
    assert_eq!(failure(ro.create_multipart_upload().bucket(b).key("x").send().await), (403, "AccessDenied".into()));

    gw.delete_tenant(&t.name).await;
    gw.delete_tenant(&other.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn multipart_quotas_and_the_sweeper() {
    let mut cfg = crate::support::config();
    cfg.server.s3_max_uploads = 2;
    let gw = Gateway::start_with(cfg).await;
    let t = gw.create_tenant(&unique("s3mq")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let b = t.name.as_str();

    // Per-object cap across parts.
    gw.set_quota(&t.name, "max_object_bytes", (3 * MIB) as i64).await;
    let id = create(&s3, b, "a").await;
    upload_part(&s3, b, "a", &id, 1, bytes(2 * MIB, 1)).await;
    let over =
        s3.upload_part().bucket(b).key("a").upload_id(&id).part_number(2).body(ByteStream::from(bytes(2 * MIB, 2)));
    assert_eq!(failure(over.send().await), (400, "EntityTooLarge".into()));
    // Replacing part 1 with one of the same size fits.
    upload_part(&s3, b, "a", &id, 1, bytes(2 * MIB, 3)).await;

    // Open uploads per tenant.
    s3.create_multipart_upload().bucket(b).key("b").send().await.expect("second");
    let third = s3.create_multipart_upload().bucket(b).key("c").send().await;
    assert_eq!(failure(third), (403, "TooManyUploads".into()));

    // Storage quota: parts count against it.
    gw.set_quota(&t.name, "max_storage_bytes", (2 * MIB + 100) as i64).await;
    let full = s3.upload_part().bucket(b).key("a").upload_id(&id).part_number(2).body(ByteStream::from(bytes(101, 4)));
    assert_eq!(failure(full.send().await), (403, "QuotaExceeded".into()));
    upload_part(&s3, b, "a", &id, 2, bytes(100, 5)).await;

    // The sweeper aborts what is older than the expiry (0 s here) and frees it.
    assert_eq!(object_usage(&gw, &t.service_key).await.0, (2 * MIB + 100) as i64);
    let tenant = sluice::ids::TenantId(t.body["tenant"]["id"].as_str().expect("id").parse().expect("uuid"));
    let swept = sluice::objects::multipart::sweep(&gw.svc, 0, Some(tenant)).await.expect("sweep");
    assert_eq!(swept, 2);
    assert_eq!(object_usage(&gw, &t.service_key).await.0, 0);
    let uploads = s3.list_multipart_uploads().bucket(b).send().await.expect("list");
    assert!(uploads.uploads().is_empty());
    s3.create_multipart_upload().bucket(b).key("c").send().await.expect("room again");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn list_objects_v1_and_date_conditions() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3v1")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let b = t.name.as_str();
    for k in ["a/1", "a/2", "b/1", "c", "d"] {
        s3.put_object().bucket(b).key(k).body(ByteStream::from_static(b"x")).send().await.expect("put");
    }
    // Pages of two with a delimiter, following NextMarker.
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page = s3
            .list_objects()
            .bucket(b)
            .delimiter("/")
            .max_keys(2)
            .set_marker(marker.clone())
            .send()
            .await
            .expect("list");
        seen.extend(page.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)));
        seen.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = page.next_marker().map(str::to_owned);
        assert!(marker.is_some());
    }
    seen.sort();
    assert_eq!(seen, ["a/", "b/", "c", "d"]);
    let l = s3.list_objects().bucket(b).prefix("a/").marker("a/1").send().await.expect("marker");
    let keys: Vec<_> = l.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["a/2"]);

    // If-Modified-Since / If-Unmodified-Since.
    let head = s3.head_object().bucket(b).key("c").send().await.expect("head");
    let modified = *head.last_modified().expect("last modified");
    let later = aws_sdk_s3::primitives::DateTime::from_secs(modified.secs() + 3600);
    let earlier = aws_sdk_s3::primitives::DateTime::from_secs(modified.secs() - 3600);
    assert_eq!(failure(s3.get_object().bucket(b).key("c").if_modified_since(later).send().await).0, 304);
    let got = s3.get_object().bucket(b).key("c").if_modified_since(earlier).send().await.expect("modified");
    assert_eq!(body_text(got).await, "x");
    let (status, code) = failure(s3.get_object().bucket(b).key("c").if_unmodified_since(earlier).send().await);
    assert_eq!((status, code.as_str()), (412, "PreconditionFailed"));
    s3.head_object().bucket(b).key("c").if_unmodified_since(later).send().await.expect("unmodified");
    // The copy-source forms: 412 either way.
    let copy = s3.copy_object().bucket(b).key("c2").copy_source(format!("{b}/c"));
    let (status, code) = failure(copy.clone().copy_source_if_modified_since(later).send().await);
    assert_eq!((status, code.as_str()), (412, "PreconditionFailed"));
    assert_eq!(failure(copy.clone().copy_source_if_unmodified_since(earlier).send().await).0, 412);
    copy.copy_source_if_modified_since(earlier).send().await.expect("copy when modified");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn checksums_are_verified_stored_and_returned() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("s3ck")).await;
    let s3 = client(&gw, &create_key(&gw, &t, json!({})).await);
    let b = t.name.as_str();
    let data = bytes(100_000, 5);
    let path = std::env::temp_dir().join(format!("{}-body", t.name));
    std::fs::write(&path, &data).expect("write");

    for algorithm in [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32C,
        ChecksumAlgorithm::Crc64Nvme,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ] {
        // A body from a file streams as aws-chunked with the checksum as a
        // trailer; one in memory sends it as a header.
        for streamed in [true, false] {
            let key = format!("{}-{streamed}", algorithm.as_str());
            let body = if streamed {
                ByteStream::from_path(&path).await.expect("file body")
            } else {
                ByteStream::from(data.clone())
            };
            let put = s3.put_object().bucket(b).key(&key).checksum_algorithm(algorithm.clone()).body(body);
            let put = put.send().await.unwrap_or_else(|e| panic!("put {key}: {e:?}"));
            let head =
                s3.head_object().bucket(b).key(&key).checksum_mode(ChecksumMode::Enabled).send().await.expect("head");
            let (sent, stored) = match algorithm {
                ChecksumAlgorithm::Crc32 => (put.checksum_crc32(), head.checksum_crc32()),
                ChecksumAlgorithm::Crc32C => (put.checksum_crc32_c(), head.checksum_crc32_c()),
                ChecksumAlgorithm::Crc64Nvme => (put.checksum_crc64_nvme(), head.checksum_crc64_nvme()),
                ChecksumAlgorithm::Sha1 => (put.checksum_sha1(), head.checksum_sha1()),
                _ => (put.checksum_sha256(), head.checksum_sha256()),
            };
            assert!(sent.is_some(), "{key}: no checksum in the PutObject answer");
            assert_eq!(sent, stored, "{key}");
            // Not user metadata on either door.
            assert!(head.metadata().is_none_or(|m| m.is_empty()), "{key}: {:?}", head.metadata());
            // GET validates it (the SDK checks a returned checksum).
            let got =
                s3.get_object().bucket(b).key(&key).checksum_mode(ChecksumMode::Enabled).send().await.expect("get");
            assert_eq!(got.body.collect().await.expect("body").into_bytes().len(), data.len());
        }
    }
    let _ = std::fs::remove_file(&path);
    let resp = gw.http.head(gw.url("/v1/objects/CRC32-true")).bearer_auth(&t.service_key).send().await.expect("head");
    assert!(resp.headers().keys().all(|k| !k.as_str().starts_with("x-sluice-meta-")), "{:?}", resp.headers());

    // A wrong checksum is refused and nothing is stored.
    let bad = s3
        .put_object()
        .bucket(b)
        .key("bad")
        .checksum_crc32("AAAAAA==")
        .body(ByteStream::from(data.clone()))
        .send()
        .await;
    assert_eq!(failure(bad), (400, "BadDigest".into()));
    assert_eq!(failure(s3.head_object().bucket(b).key("bad").send().await).0, 404);
    // Content-MD5 is checked too (not stored).
    let md5 = sluice::objects::checksum::digest("MD5", &data).expect("md5");
    let put = s3.put_object().bucket(b).key("md5").content_md5(md5).body(ByteStream::from(data.clone()));
    put.send().await.expect("matching Content-MD5");
    let put = s3.put_object().bucket(b).key("md5-bad").content_md5("1B2M2Y8AsgTpgAmY7PhCfg==");
    assert_eq!(failure(put.body(ByteStream::from(data.clone())).send().await), (400, "BadDigest".into()));
    assert_eq!(failure(s3.head_object().bucket(b).key("md5-bad").send().await).0, 404);
    // The gateway's own metadata names are not the client's to set.
    let reserved =
        s3.put_object().bucket(b).key("r").metadata("sluice-checksum", "CRC32:x").body(ByteStream::from_static(b"x"));
    assert_eq!(failure(reserved.send().await).1, "InvalidArgument");

    // Parts are verified too; the completed upload answers the composite checksum.
    let id = s3
        .create_multipart_upload()
        .bucket(b)
        .key("mp")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .expect("create")
        .upload_id()
        .expect("id")
        .to_owned();
    let mut parts = Vec::new();
    for n in 1..=2 {
        let out = s3
            .upload_part()
            .bucket(b)
            .key("mp")
            .upload_id(&id)
            .part_number(n)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(bytes(5 * MIB, n as u8)))
            .send()
            .await
            .expect("part");
        assert!(out.checksum_crc32().is_some());
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                .build(),
        );
    }
    let bad_part = s3
        .upload_part()
        .bucket(b)
        .key("mp")
        .upload_id(&id)
        .part_number(3)
        .checksum_crc32("AAAAAA==")
        .body(ByteStream::from(bytes(1000, 3)))
        .send()
        .await;
    assert_eq!(failure(bad_part), (400, "BadDigest".into()));
    let listed = s3.list_parts().bucket(b).key("mp").upload_id(&id).send().await.expect("list parts");
    assert_eq!(listed.parts().len(), 2, "the refused part is not stored");
    let done = s3
        .complete_multipart_upload()
        .bucket(b)
        .key("mp")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .expect("complete");
    assert!(done.checksum_crc32().is_some_and(|c| c.ends_with("-2")), "{:?}", done.checksum_crc32());
    // HEAD and whole-object GET with checksum mode answer it, as long as the
    // object is the upload's.
    let composite = done.checksum_crc32().map(str::to_owned);
    let head = s3.head_object().bucket(b).key("mp").checksum_mode(ChecksumMode::Enabled).send().await.expect("head");
    assert_eq!(
        (head.checksum_crc32().map(str::to_owned), head.checksum_type()),
        (composite.clone(), Some(&ChecksumType::Composite))
    );
    let got = s3.get_object().bucket(b).key("mp").checksum_mode(ChecksumMode::Enabled).send().await.expect("get");
    assert_eq!(got.checksum_crc32().map(str::to_owned), composite);
    assert_eq!(got.body.collect().await.expect("body").into_bytes().len(), 10 * MIB);
    let ranged = s3.get_object().bucket(b).key("mp").range("bytes=0-9").checksum_mode(ChecksumMode::Enabled);
    assert_eq!(ranged.send().await.expect("ranged get").checksum_crc32(), None, "not for a range");
    let rows = |svc: &sluice::services::Services, name: String| {
        let svc = svc.clone();
        async move {
            let c = svc.control.client().await.expect("control");
            let sql =
                "SELECT count(*) FROM s3_object_checksums k JOIN tenants t ON t.id = k.tenant_id WHERE t.name = $1";
            c.query_one(sql, &[&name]).await.expect("count").get::<_, i64>(0)
        }
    };
    assert_eq!(rows(&gw.svc, t.name.clone()).await, 1);
    // Replaced by a plain PutObject: that checksum is gone with the upload's object.
    s3.put_object().bucket(b).key("mp").body(ByteStream::from_static(b"plain")).send().await.expect("put");
    let head = s3.head_object().bucket(b).key("mp").checksum_mode(ChecksumMode::Enabled).send().await.expect("head");
    assert_ne!(head.checksum_crc32().map(str::to_owned), composite);
    assert_ne!(head.checksum_type(), Some(&ChecksumType::Composite));
    assert_eq!(rows(&gw.svc, t.name.clone()).await, 0);

    // A part streamed from a file goes as aws-chunked with a trailer checksum.
    let path = std::env::temp_dir().join(format!("{}-part", t.name));
    std::fs::write(&path, &data).expect("write");
    let id = create(&s3, b, "mp2").await;
    let out = s3
        .upload_part()
        .bucket(b)
        .key("mp2")
        .upload_id(&id)
        .part_number(1)
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .body(ByteStream::from_path(&path).await.expect("file body"))
        .send()
        .await
        .expect("streamed part");
    let _ = std::fs::remove_file(&path);
    assert!(out.checksum_crc32_c().is_some());
    let listed = s3.list_parts().bucket(b).key("mp2").upload_id(&id).send().await.expect("list parts");
    assert_eq!(listed.parts().first().and_then(|p| p.size()), Some(data.len() as i64));
    assert_eq!(listed.parts().first().and_then(|p| p.checksum_crc32_c()), out.checksum_crc32_c());

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn virtual_host_style_with_a_base_domain() {
    use aws_sdk_s3::config::{Credentials, Region};
    use aws_sdk_s3::presigning::PresigningConfig;
    let mut cfg = crate::support::config();
    cfg.server.s3_base_domain = "s3.sluice.test".into();
    let gw = Gateway::start_with(cfg).await;
    let t = gw.create_tenant(&unique("s3vh")).await;
    let key = create_key(&gw, &t, json!({})).await;
    // Path style by address keeps working with a base domain set.
    let s3 = client(&gw, &key);
    s3.put_object().bucket(&t.name).key("v.txt").body(ByteStream::from_static(b"virtual")).send().await.expect("put");

    // A virtual-host-style URL: the bucket in the Host header. The name does
    // not resolve, so the request goes to the door's address with that Host.
    let port = gw.s3_addr.expect("s3 door").port();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://s3.sluice.test:{port}"))
        .credentials_provider(Credentials::new(
            key["access_key_id"].as_str().expect("id"),
            key["secret_access_key"].as_str().expect("secret"),
            None,
            None,
            "test",
        ))
        .force_path_style(false)
        .build();
    let vh = Client::from_conf(conf);
    let presign = PresigningConfig::expires_in(std::time::Duration::from_secs(60)).expect("presign");
    let req = vh.get_object().bucket(&t.name).key("v.txt").presigned(presign).await.expect("presign");
    let url = url::Url::parse(req.uri()).expect("url");
    let host = url.host_str().expect("host").to_owned();
    assert_eq!(host, format!("{}.s3.sluice.test", t.name));
    let mut direct = url.clone();
    direct.set_host(Some("127.0.0.1")).expect("host");
    let resp =
        gw.http.get(direct.as_str()).header("host", format!("{host}:{port}")).send().await.expect("virtual-host get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("text"), "virtual");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
