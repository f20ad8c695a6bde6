"""boto3 against Sluice's S3 door, with boto3's default settings (only the
path-style addressing a loopback endpoint needs): upload_file /
download_file (boto3 >= 1.36 adds a CRC32 checksum to every upload by
default), head, list, presigned GET and PUT over plain HTTP (boto3's default
presigning, which is SigV2 for S3, and SigV4), expired presigned GETs,
delete. Prints one JSON object of what it saw; the Rust test
(tests/integration/s3_tools.rs) asserts on it.

Usage: s3_boto3.py basic|multipart ENDPOINT BUCKET WORKDIR
with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment.
basic uploads WORKDIR/small.bin, multipart WORKDIR/big.bin (above boto3's
8 MiB multipart threshold)."""

import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import botocore
from botocore.config import Config


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def http(method: str, url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    """A plain HTTP request (no SDK): (status, body)."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def xml_code(body: bytes) -> str | None:
    text = body.decode("utf-8", "replace")
    start = text.find("<Code>")
    return text[start + 6 : text.find("</Code>")] if start >= 0 else None


def client(endpoint: str, **config):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, **config),
    )


def record_checksums(s3, seen: list) -> None:
    """Note the checksum headers boto3 sends on each request (to show the
    default checksums were in play)."""

    def before_send(request, **_kwargs):
        names = sorted(k.lower() for k in request.headers.keys() if k.lower().startswith("x-amz-checksum-"))
        seen.append({"url": request.url.split("?")[0], "checksums": names})

    s3.meta.events.register("before-send.s3", before_send)


def basic(s3, endpoint: str, bucket: str, work: Path) -> dict:
    out: dict = {"boto3": boto3.__version__, "botocore": botocore.__version__}
    sent: list = []
    record_checksums(s3, sent)
    src = work / "small.bin"
    key = "boto3/small.bin"
    s3.upload_file(
        str(src), bucket, key, ExtraArgs={"Metadata": {"owner": "boto3"}, "ContentType": "text/x-boto3"}
    )
    out["upload_checksums"] = [s["checksums"] for s in sent if s["url"].endswith("/" + key)]
    dest = work / "small.down"
    s3.download_file(bucket, key, str(dest))
    out["download_sha256"] = sha256_file(dest)
    head = s3.head_object(Bucket=bucket, Key=key)
    out["head"] = {
        "length": head["ContentLength"],
        "content_type": head.get("ContentType"),
        "metadata": head.get("Metadata", {}),
        "etag": head.get("ETag"),
    }
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="boto3/")
    out["listed"] = [o["Key"] for o in listed.get("Contents", [])]

    # Presigned URLs, used with plain HTTP: boto3's default for S3 (query
    # SigV2, `Signature=`) and SigV4 (`X-Amz-Signature=`).
    v4 = client(endpoint, signature_version="s3v4")
    get = {"Bucket": bucket, "Key": key}
    for name, signer in (("default", s3), ("v4", v4)):
        url = signer.generate_presigned_url("get_object", Params=get, ExpiresIn=300)
        status, body = http("GET", url)
        out[f"presigned_get_{name}"] = {
            "status": status,
            "sha256": hashlib.sha256(body).hexdigest(),
            "sigv4": "X-Amz-Signature=" in url,
        }
        # A PUT signs its content type; the plain request sends the same.
        put_key = f"boto3/presigned-{name}.txt"
        params = {"Bucket": bucket, "Key": put_key, "ContentType": "text/plain"}
        url = signer.generate_presigned_url("put_object", Params=params, ExpiresIn=300)
        put_body = f"put through a presigned URL ({name})\n".encode()
        status, _ = http("PUT", url, put_body, {"Content-Type": "text/plain"})
        got = s3.get_object(Bucket=bucket, Key=put_key)
        out[f"presigned_put_{name}"] = {
            "status": status,
            "round_trip": got["Body"].read() == put_body,
            "content_type": got.get("ContentType"),
        }
    expiring = [signer.generate_presigned_url("get_object", Params=get, ExpiresIn=1) for signer in (s3, v4)]
    time.sleep(2.1)
    for name, url in zip(("default", "v4"), expiring):
        status, body = http("GET", url)
        out[f"expired_get_{name}"] = {"status": status, "code": xml_code(body)}

    s3.delete_object(Bucket=bucket, Key="boto3/presigned-v4.txt")
    try:
        s3.head_object(Bucket=bucket, Key="boto3/presigned-v4.txt")
        out["deleted"] = False
    except botocore.exceptions.ClientError as e:
        out["deleted"] = e.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    return out


def multipart(s3, _endpoint: str, bucket: str, work: Path) -> dict:
    src = work / "big.bin"
    key = "boto3/big.bin"
    s3.upload_file(str(src), bucket, key)
    dest = work / "big.down"
    s3.download_file(bucket, key, str(dest))
    return {"download_sha256": sha256_file(dest), "length": s3.head_object(Bucket=bucket, Key=key)["ContentLength"]}


def main() -> None:
    mode, endpoint, bucket, work = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    s3 = client(endpoint)
    result = {"basic": basic, "multipart": multipart}[mode](s3, endpoint, bucket, work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
