//! S3 tools against the S3 door, run as their users run them: aws-cli
//! (`aws s3 cp/ls/sync/rm`, `aws s3api`), boto3 (tests/clients/s3_boto3.py:
//! `upload_file` with boto3's default checksums, presigned URLs) and rclone
//! (configured by `RCLONE_CONFIG_DOOR_*` variables). Each test checks what
//! the tool did by reading back through the tool and through `/v1/objects`
//! (same bytes, content type and metadata).
//!
//! `scripts/test` installs the tools (boto3 and aws-cli v1 from PyPI, rclone
//! from Debian) and sets `SLUICE_DRIVERS_REQUIRED=1`, so there a missing tool
//! fails its test instead of skipping it. The `*_multipart_*` tests upload
//! [`BIG`] bytes, above each tool's multipart threshold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::support::{Gateway, TestTenant, available, repo_root, unique};

/// Above the 8 MiB multipart threshold of aws-cli and boto3 (and rclone's
/// upload cutoff as the multipart test sets it).
const BIG: usize = 12 << 20;

/// A gateway, a tenant with an S3 key, and a scratch folder for the tool.
struct Setup {
    gw: Gateway,
    t: TestTenant,
    endpoint: String,
    key_id: String,
    secret: String,
    dir: Scratch,
}

/// A scratch folder, removed when dropped (also when a test fails).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An object as `/v1/objects` serves it.
struct Served {
    status: u16,
    body: Vec<u8>,
    content_type: Option<String>,
    /// `x-sluice-meta-*`, without the prefix.
    meta: BTreeMap<String, String>,
}

impl Setup {
    async fn start(prefix: &str) -> Self {
        let gw = Gateway::start().await;
        let t = gw.create_tenant(&unique(prefix)).await;
        let key = gw.create_s3_key(&t, json!({ "label": prefix })).await;
        let field = |name: &str| key[name].as_str().unwrap_or_else(|| panic!("{name} in {key}")).to_owned();
        let (key_id, secret) = (field("access_key_id"), field("secret_access_key"));
        let endpoint = format!("http://{}", gw.s3_addr.expect("the S3 door is on in tests"));
        let dir = Scratch(std::env::temp_dir().join(unique("sluice-s3-tools")));
        std::fs::create_dir_all(&*dir).expect("scratch folder");
        Self { gw, t, endpoint, key_id, secret, dir }
    }

    fn bucket(&self) -> &str {
        &self.t.name
    }

    /// `s3://<bucket>/<key>`
    fn s3_url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket())
    }

    /// Write a file under the scratch folder.
    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, data).expect("write");
        path
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// The key and the door for an AWS tool, and nothing of the machine's own
    /// AWS configuration. Path-style, as the door serves.
    fn aws_env(&self, cmd: &mut Command) {
        let config = self.dir.join("aws.config");
        std::fs::write(&config, "[default]\ns3 =\n    addressing_style = path\n").expect("aws config");
        cmd.current_dir(&*self.dir)
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", config)
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.join("no-credentials"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL");
    }

    fn aws(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("aws");
        cmd.arg("--endpoint-url").arg(&self.endpoint).args(args);
        self.aws_env(&mut cmd);
        cmd
    }

    /// tests/clients/s3_boto3.py in `mode`; its JSON.
    async fn boto3(&self, mode: &str) -> Value {
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tests/clients/s3_boto3.py"))
            .args([mode, &self.endpoint, self.bucket()])
            .arg(&*self.dir);
        self.aws_env(&mut cmd);
        let (stdout, _) = run(&mut cmd, &format!("s3_boto3.py {mode}")).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("s3_boto3.py: not JSON ({e}): {stdout}"))
    }

    /// rclone with the remote `door:` (the door, this key) and no config file.
    fn rclone(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("rclone");
        cmd.args(args).current_dir(&*self.dir).env("RCLONE_CONFIG", "/dev/null").env("RCLONE_RETRIES", "1");
        for (name, value) in [
            ("TYPE", "s3"),
            ("PROVIDER", "Other"),
            ("ENDPOINT", self.endpoint.as_str()),
            ("ACCESS_KEY_ID", self.key_id.as_str()),
            ("SECRET_ACCESS_KEY", self.secret.as_str()),
            ("REGION", "us-east-1"),
            // rclone's defaults for provider `Other`: CreateBucket first
            // (answered BucketAlreadyOwnedByYou), ListObjects v1.
        ] {
            cmd.env(format!("RCLONE_CONFIG_DOOR_{name}"), value);
        }
        // rclone's AWS SDK refuses a custom CA bundle on its own transport
        // (and the door is plain HTTP anyway).
        cmd.env_remove("AWS_CA_BUNDLE");
        cmd
    }

    /// `door:<bucket>/<key>`
    fn remote(&self, key: &str) -> String {
        format!("door:{}/{key}", self.bucket())
    }

    async fn served(&self, key: &str) -> Served {
        let resp = self
            .gw
            .http
            .get(self.gw.url(&format!("/v1/objects/{key}")))
            .bearer_auth(&self.t.service_key)
            .send()
            .await
            .expect("GET /v1/objects");
        let status = resp.status().as_u16();
        let header = |v: &reqwest::header::HeaderValue| v.to_str().unwrap_or_default().to_owned();
        let content_type = resp.headers().get("content-type").map(header);
        let meta = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| k.as_str().strip_prefix("x-sluice-meta-").map(|k| (k.to_owned(), header(v))))
            .collect();
        let body = resp.bytes().await.expect("body").to_vec();
        Served { status, body, content_type, meta }
    }

    /// The object is on `/v1/objects` with these bytes, content type and
    /// (at least) this metadata.
    async fn assert_served(&self, key: &str, data: &[u8], content_type: &str, meta: &[(&str, &str)]) -> Served {
        let s = self.served(key).await;
        assert_eq!(s.status, 200, "GET /v1/objects/{key}");
        assert_eq!((s.body.len(), sha256(&s.body)), (data.len(), sha256(data)), "{key}: the same bytes over HTTP");
        assert_eq!(s.content_type.as_deref(), Some(content_type), "{key}");
        for (k, v) in meta {
            assert_eq!(s.meta.get(*k).map(String::as_str), Some(*v), "{key}: metadata {k} in {:?}", s.meta);
        }
        s
    }

    /// `up` copies the local file holding `data` to `key`, `down` copies
    /// `key` back to `down.bin`: the same bytes come back, and `/v1/objects`
    /// serves them as [`Self::assert_served`] checks.
    async fn round_trip(
        &self,
        data: &[u8],
        mut up: Command,
        mut down: Command,
        key: &str,
        content_type: &str,
        meta: &[(&str, &str)],
    ) -> Served {
        run(&mut up, &format!("upload of {key}")).await;
        run(&mut down, &format!("download of {key}")).await;
        assert_eq!(sha256(&self.read("down.bin")), sha256(data), "{key}: the same bytes back");
        self.assert_served(key, data, content_type, meta).await
    }

    async fn finish(self) {
        self.gw.delete_tenant(&self.t.name).await;
        self.gw.stop().await;
    }
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn noise(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill(&mut data[..]);
    data
}

/// Set a file's modification time an hour back, so a sync sees the copy it
/// made as newer and only a change of size counts as a change.
fn age(path: &Path) {
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(an_hour_ago)).expect("set mtime");
}

/// Run a tool to success: (stdout, stderr), or a panic with both.
async fn run(cmd: &mut Command, what: &str) -> (String, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} finished within 120 s"))
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{what}: {}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    (stdout, stderr)
}

/// A `(1, 36)` from `"1.36.2"`.
fn major_minor(v: &Value) -> (u64, u64) {
    let mut parts = v.as_str().unwrap_or_default().split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Local files `aws s3 sync` said it uploaded, sorted.
fn aws_uploads(stdout: &str) -> Vec<String> {
    let mut files: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("upload: "))
        .map(|l| l.split(" to ").next().unwrap_or(l).to_owned())
        .collect();
    files.sort();
    files
}

/// Files rclone logged (`-v`) with `event` (`Copied`, `Deleted`), sorted.
fn rclone_events(stderr: &str, event: &str) -> Vec<String> {
    let mut files: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.split_once("INFO  : ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(&format!(": {event}")).map(|(file, _)| file.to_owned()))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn aws_cli_cp_ls_sync_rm_and_s3api() {
    if !available("aws", &["--version"]).await {
        return;
    }
    let s = Setup::start("s3cli").await;
    let data = noise(100 << 10);
    s.write("small.bin", &data);

    // cp up (with metadata and a content type) and down.
    let mut up = s.aws(&["s3", "cp", "small.bin", &s.s3_url("cli/small.bin"), "--only-show-errors"]);
    up.args(["--metadata", "owner=aws-cli", "--content-type", "text/x-aws-cli"]);
    let down = s.aws(&["s3", "cp", &s.s3_url("cli/small.bin"), "down.bin", "--only-show-errors"]);
    s.round_trip(&data, up, down, "cli/small.bin", "text/x-aws-cli", &[("owner", "aws-cli")]).await;

    // sync uploads what is new, then only what changed.
    for (file, body) in [("tree/a.txt", "alpha"), ("tree/b.txt", "bravo"), ("tree/sub/c.txt", "charlie")] {
        age(&s.write(file, body.as_bytes()));
    }
    let sync = ["s3", "sync", "tree", &s.s3_url("tree/"), "--no-progress"];
    let (first, _) = run(&mut s.aws(&sync), "aws s3 sync").await;
    assert_eq!(aws_uploads(&first), ["tree/a.txt", "tree/b.txt", "tree/sub/c.txt"], "{first}");
    s.write("tree/b.txt", b"bravo, changed");
    let (second, _) = run(&mut s.aws(&sync), "aws s3 sync again").await;
    assert_eq!(aws_uploads(&second), ["tree/b.txt"], "{second}");
    s.assert_served("tree/b.txt", b"bravo, changed", "text/plain", &[]).await;

    // ls: prefixes at the top, keys and sizes below.
    let (top, _) = run(&mut s.aws(&["s3", "ls", &s.s3_url("")]), "aws s3 ls").await;
    assert!(top.contains("PRE cli/") && top.contains("PRE tree/"), "{top}");
    let (tree, _) = run(&mut s.aws(&["s3", "ls", "--recursive", &s.s3_url("tree/")]), "aws s3 ls --recursive").await;
    let listed: Vec<(&str, &str)> = tree
        .lines()
        .filter_map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[3], f[2]))
        })
        .collect();
    assert_eq!(listed, [("tree/a.txt", "5"), ("tree/b.txt", "14"), ("tree/sub/c.txt", "7")], "{tree}");

    // rm removes.
    run(&mut s.aws(&["s3", "rm", &s.s3_url("tree/a.txt"), "--only-show-errors"]), "aws s3 rm").await;
    assert_eq!(s.served("tree/a.txt").await.status, 404);

    // s3api: put with metadata, head, list, get, delete-objects.
    let b = s.bucket();
    let put = ["s3api", "put-object", "--bucket", b, "--key", "api/one.bin", "--body", "small.bin"];
    let mut cmd = s.aws(&put);
    cmd.args(["--metadata", "team=blue", "--content-type", "application/x-one"]);
    let (out, _) = run(&mut cmd, "aws s3api put-object").await;
    let put: Value = serde_json::from_str(&out).expect("put-object JSON");
    let (out, _) =
        run(&mut s.aws(&["s3api", "head-object", "--bucket", b, "--key", "api/one.bin"]), "head-object").await;
    let head: Value = serde_json::from_str(&out).expect("head-object JSON");
    assert_eq!(head["ContentLength"], data.len());
    assert_eq!(head["ContentType"], "application/x-one");
    assert_eq!(head["Metadata"], json!({ "team": "blue" }));
    assert_eq!(head["ETag"], put["ETag"]);
    let list = ["s3api", "list-objects-v2", "--bucket", b, "--prefix", "api/", "--query", "Contents[].Key"];
    let (out, _) = run(&mut s.aws(&list), "list-objects-v2").await;
    assert_eq!(serde_json::from_str::<Value>(&out).expect("JSON"), json!(["api/one.bin"]));
    let get = ["s3api", "get-object", "--bucket", b, "--key", "api/one.bin", "api.down"];
    run(&mut s.aws(&get), "get-object").await;
    assert_eq!(sha256(&s.read("api.down")), sha256(&data));
    s.assert_served("api/one.bin", &data, "application/x-one", &[("team", "blue")]).await;
    let delete = r#"{"Objects":[{"Key":"api/one.bin"},{"Key":"tree/b.txt"}]}"#;
    let (out, _) =
        run(&mut s.aws(&["s3api", "delete-objects", "--bucket", b, "--delete", delete]), "delete-objects").await;
    let deleted: Value = serde_json::from_str(&out).expect("delete-objects JSON");
    assert_eq!(deleted["Deleted"].as_array().map(Vec::len), Some(2), "{deleted}");

    // rm --recursive empties a prefix.
    run(&mut s.aws(&["s3", "rm", "--recursive", &s.s3_url("tree/"), "--only-show-errors"]), "aws s3 rm --recursive")
        .await;
    let list = ["s3api", "list-objects-v2", "--bucket", b, "--query", "Contents[].Key"];
    let (out, _) = run(&mut s.aws(&list), "list-objects-v2").await;
    assert_eq!(serde_json::from_str::<Value>(&out).expect("JSON"), json!(["cli/small.bin"]));
    s.finish().await;
}

#[tokio::test]
async fn aws_cli_multipart_upload() {
    if !available("aws", &["--version"]).await {
        return;
    }
    let s = Setup::start("s3clim").await;
    let data = noise(BIG);
    s.write("big.bin", &data);
    let up = s.aws(&["s3", "cp", "big.bin", &s.s3_url("big/big.bin"), "--only-show-errors"]);
    let down = s.aws(&["s3", "cp", &s.s3_url("big/big.bin"), "down.bin", "--only-show-errors"]);
    s.round_trip(&data, up, down, "big/big.bin", "application/octet-stream", &[]).await;
    s.finish().await;
}

#[tokio::test]
async fn boto3_upload_file_default_checksums_and_presigned_urls() {
    if !available("python3", &["-c", "import boto3"]).await {
        return;
    }
    let s = Setup::start("s3boto").await;
    let data = noise(100 << 10);
    s.write("small.bin", &data);
    let out = s.boto3("basic").await;
    assert!(major_minor(&out["boto3"]) >= (1, 36), "boto3 >= 1.36 (default checksums): {out}");
    // boto3 added a checksum of its own accord, and the door took it.
    let sent = out["upload_checksums"][0].as_array().expect("checksums the upload sent");
    assert!(!sent.is_empty(), "boto3 sent a checksum header: {out}");
    let digest = sha256(&data);
    assert_eq!(out["download_sha256"], digest.as_str());
    assert_eq!(out["head"]["length"], data.len());
    assert_eq!(out["head"]["content_type"], "text/x-boto3");
    assert_eq!(out["head"]["metadata"], json!({ "owner": "boto3" }));
    assert_eq!(out["listed"], json!(["boto3/small.bin"]));
    // Presigned URLs with plain HTTP: GET, PUT, and expired GETs refused.
    assert_eq!(out["presigned_get_v4"]["sigv4"], true);
    for signer in ["default", "v4"] {
        assert_eq!(out[format!("presigned_get_{signer}")]["status"], 200, "{out}");
        assert_eq!(out[format!("presigned_get_{signer}")]["sha256"], digest.as_str());
        let put = &out[format!("presigned_put_{signer}")];
        assert_eq!((put["status"].as_u64(), put["round_trip"].as_bool()), (Some(200), Some(true)), "{out}");
        let expired = &out[format!("expired_get_{signer}")];
        assert_eq!((expired["status"].as_u64(), expired["code"].as_str()), (Some(403), Some("AccessDenied")), "{out}");
    }
    assert_eq!(out["deleted"], true);
    s.assert_served("boto3/small.bin", &data, "text/x-boto3", &[("owner", "boto3")]).await;
    s.assert_served("boto3/presigned-default.txt", b"put through a presigned URL (default)\n", "text/plain", &[]).await;
    s.finish().await;
}

#[tokio::test]
async fn boto3_multipart_upload_file() {
    if !available("python3", &["-c", "import boto3"]).await {
        return;
    }
    let s = Setup::start("s3botom").await;
    let data = noise(BIG);
    s.write("big.bin", &data);
    let out = s.boto3("multipart").await;
    assert_eq!(
        (out["download_sha256"].as_str(), out["length"].as_u64()),
        (Some(sha256(&data).as_str()), Some(BIG as u64))
    );
    s.assert_served("boto3/big.bin", &data, "application/octet-stream", &[]).await;
    s.finish().await;
}

#[tokio::test]
async fn rclone_copy_sync_check_and_delete() {
    if !available("rclone", &["version"]).await {
        return;
    }
    let s = Setup::start("s3rcl").await;
    let data = noise(100 << 10);
    s.write("small.bin", &data);
    let up = s.rclone(&["copyto", "small.bin", &s.remote("rc/small.bin")]);
    let down = s.rclone(&["copyto", &s.remote("rc/small.bin"), "down.bin"]);
    // rclone keeps the file's modification time as user metadata.
    let served = s.round_trip(&data, up, down, "rc/small.bin", "application/octet-stream", &[]).await;
    assert!(served.meta.contains_key("mtime"), "{:?}", served.meta);

    // sync: new files, then only the changed one copied and the removed one deleted.
    for (file, body) in [("tree/a.txt", "alpha"), ("tree/b.txt", "bravo"), ("tree/sub/c.txt", "charlie")] {
        age(&s.write(file, body.as_bytes()));
    }
    let sync = ["sync", "tree", &s.remote("tree"), "-v"];
    let (_, log) = run(&mut s.rclone(&sync), "rclone sync").await;
    assert_eq!(rclone_events(&log, "Copied"), ["a.txt", "b.txt", "sub/c.txt"], "{log}");
    s.write("tree/b.txt", b"bravo, changed");
    std::fs::remove_file(s.dir.join("tree/sub/c.txt")).expect("rm");
    let (_, log) = run(&mut s.rclone(&sync), "rclone sync again").await;
    assert_eq!(rclone_events(&log, "Copied"), ["b.txt"], "{log}");
    assert_eq!(rclone_events(&log, "Deleted"), ["sub/c.txt"], "{log}");
    s.assert_served("tree/b.txt", b"bravo, changed", "text/plain; charset=utf-8", &[]).await;
    assert_eq!(s.served("tree/sub/c.txt").await.status, 404);
    // check compares sizes and hashes (MD5 from the ETag) both sides.
    run(&mut s.rclone(&["check", "tree", &s.remote("tree")]), "rclone check").await;

    let (out, _) = run(&mut s.rclone(&["lsf", "-R", "--files-only", &s.remote("")]), "rclone lsf").await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["rc/small.bin", "tree/a.txt", "tree/b.txt"], "{out}");
    run(&mut s.rclone(&["deletefile", &s.remote("rc/small.bin")]), "rclone deletefile").await;
    assert_eq!(s.served("rc/small.bin").await.status, 404);
    s.finish().await;
}

#[tokio::test]
async fn rclone_multipart_upload() {
    if !available("rclone", &["version"]).await {
        return;
    }
    let s = Setup::start("s3rclm").await;
    let data = noise(BIG);
    s.write("big.bin", &data);
    let mut up = s.rclone(&["copyto", "big.bin", &s.remote("big/big.bin")]);
    // rclone's own cutoff is 200 MiB; at 8 MiB this file goes in 5 MiB parts.
    up.env("RCLONE_CONFIG_DOOR_UPLOAD_CUTOFF", "8M").env("RCLONE_CONFIG_DOOR_CHUNK_SIZE", "5M");
    let down = s.rclone(&["copyto", &s.remote("big/big.bin"), "down.bin"]);
    s.round_trip(&data, up, down, "big/big.bin", "application/octet-stream", &[]).await;
    s.finish().await;
}
