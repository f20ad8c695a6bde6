//! A client's multipart upload, passed to the store call for call (the S3
//! door's CreateMultipartUpload … CompleteMultipartUpload): the client's part
//! numbers are the store's, so a part streams straight through with its
//! declared length and is never buffered whole (S3 parts reach 5 GiB).

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::Stream;
use http_body::{Frame, SizeHint};

use super::{Conditions, ObjectStore, S3Error};

/// A part the store has: its number and ETag, for CompleteMultipartUpload.
#[derive(Debug, Clone)]
pub struct StoredPart {
    pub number: i32,
    pub etag: String,
}

impl ObjectStore {
    /// Start a multipart upload of `key`; returns the store's upload id.
    pub async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<String, S3Error> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .set_metadata(Some(metadata.clone()))
            .send()
            .await
            .map_err(|e| S3Error::classify("create multipart upload", e))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| S3Error::Refused {
            op: "create multipart upload",
            code: None,
            message: "the store returned no upload id".into(),
        })
    }

    /// Stream one part of exactly `length` bytes to the store. A body that
    /// ends early, runs long or fails makes the store refuse the part.
    /// Returns the part's ETag.
    pub async fn upload_part_stream<S, E>(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        length: u64,
        body: S,
    ) -> Result<String, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        let body = ByteStream::from_body_1_x(SizedBody { inner: Box::pin(body), remaining: length });
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(i64::try_from(length).unwrap_or(i64::MAX))
            .body(body)
            // Sent as it streams (UNSIGNED-PAYLOAD, Content-Length), without
            // the SDK's aws-chunked checksum trailer, which some stores
            // (Garage 2.5) refuse on a streamed body; the door has checked
            // the client's own checksum already.
            .customize()
            .config_override(streaming_override())
            .send()
            .await
            .map_err(|e| S3Error::classify("upload part", e))?;
        part_etag(out.e_tag())
    }

    /// Copy `src_key` (or the `range` of it, `bytes=a-b`) of the same bucket
    /// into part `number`, server-side. Returns the part's ETag.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part_copy(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        src_key: &str,
        range: Option<String>,
        conds: Conditions<'_>,
    ) -> Result<String, S3Error> {
        // `x-amz-copy-source` is `bucket/key` with the key URL-encoded.
        let key_enc = percent_encoding::utf8_percent_encode(src_key, percent_encoding::NON_ALPHANUMERIC);
        let source = format!("{bucket}/{key_enc}");
        let out = self
            .client
            .upload_part_copy()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(source)
            .set_copy_source_range(range)
            .set_copy_source_if_match(conds.if_match.map(str::to_owned))
            .set_copy_source_if_none_match(conds.if_none_match.map(str::to_owned))
            .send()
            .await
            .map_err(|e| S3Error::classify("upload part copy", e))?;
        part_etag(out.copy_part_result().and_then(|r| r.e_tag()))
    }

    /// Complete the upload from `parts` (ascending numbers). Returns the
    /// object's ETag.
    pub async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[StoredPart],
    ) -> Result<Option<String>, S3Error> {
        let parts = parts
            .iter()
            .map(|p| CompletedPart::builder().part_number(p.number).e_tag(&p.etag).build())
            .collect::<Vec<_>>();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| S3Error::classify("complete multipart upload", e))?;
        Ok(out.e_tag().map(str::to_owned))
    }

    /// Abort the upload and drop its parts. An upload the store no longer
    /// knows is already gone: not an error.
    pub async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), S3Error> {
        match self.client.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await {
            Ok(_) => Ok(()),
            Err(e) => match S3Error::classify("abort multipart upload", e) {
                S3Error::NotFound => Ok(()),
                e if e.code() == Some("NoSuchUpload") => Ok(()),
                e => Err(e),
            },
        }
    }
}

/// Config for a request whose body streams through: no SDK checksum
/// trailer (see [`ObjectStore::upload_part_stream`]).
pub(super) fn streaming_override() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Config::builder()
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
}

fn part_etag(etag: Option<&str>) -> Result<String, S3Error> {
    etag.map(str::to_owned).ok_or_else(|| S3Error::Refused {
        op: "upload part",
        code: None,
        message: "the store returned no ETag for the part".into(),
    })
}

/// A body of exactly `remaining` bytes from a stream, with that exact size
/// hint (the SDK sends it as `Content-Length`). A stream that runs past it,
/// ends short or fails yields an error, so the store never sees a complete
/// part that the client did not send.
pub(super) struct SizedBody<S> {
    pub(super) inner: Pin<Box<S>>,
    pub(super) remaining: u64,
}

impl<S, E> http_body::Body for SizedBody<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    type Data = Bytes;
    type Error = S3Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, S3Error>>> {
        let item = ready!(self.inner.as_mut().poll_next(cx));
        Poll::Ready(match item {
            Some(Ok(chunk)) => {
                let n = chunk.len() as u64;
                if n > self.remaining {
                    Some(Err(S3Error::Body("the part is longer than its Content-Length".into())))
                } else {
                    self.remaining -= n;
                    Some(Ok(Frame::data(chunk)))
                }
            }
            Some(Err(e)) => Some(Err(S3Error::Body(e.to_string()))),
            None if self.remaining > 0 => Some(Err(S3Error::Body("the part ended before its Content-Length".into()))),
            None => None,
        })
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
