//! Streaming uploads: [`ObjectStore::put_object_stream`] writes a body of any
//! size with memory bounded by about one [`PART_SIZE`]. A body of declared
//! length above one part (and at most S3's 5 GiB for one PutObject) streams
//! straight through as one PutObject; otherwise a body of at most one part is
//! buffered and sent with PutObject (so metadata learned from the body, such
//! as a trailer checksum, can still go with it), and a larger one of unknown
//! length goes as a multipart upload, aborted on any failure or cancellation
//! so nothing half-written remains.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::multipart::{SizedBody, streaming_override};
use super::{ObjectStore, PART_SIZE, PutOptions, PutOutcome, S3Error};
use crate::ids::ObjectKey;

/// Frames a streamed-through body is sent to the store in.
const FRAME: usize = 256 << 10;
/// A frame's buffer: [`FRAME`] plus room for the chunk that crosses it (the
/// HTTP server hands over chunks of at most a few tens of KiB).
const FRAME_CAPACITY: usize = FRAME + (64 << 10);
/// A client chunk at least this large is sent on as it is (not copied into a frame).
const PASS_THROUGH: usize = 64 << 10;
/// Frames kept for reuse per streamed-through upload (see [`Frames`]): few,
/// as each one held is memory a slow upload keeps. Frames carry small chunks
/// only, from clients slower than the store, so a frame sent two frames ago
/// has usually been written.
const FRAMES_KEPT: usize = 2;

/// The frames of one streamed-through upload. A frame the store's
/// connection has written (and dropped) is taken back and filled again,
/// so a long upload does not allocate, page-fault in and free a fresh
/// 320 KiB buffer every 256 KiB. At most [`FRAMES_KEPT`] are held.
#[derive(Default)]
struct Frames {
    sent: std::collections::VecDeque<Bytes>,
}

impl Frames {
    /// An empty frame: the oldest one sent if nobody else holds it now, else a new one.
    fn empty(&mut self) -> BytesMut {
        if let Some(oldest) = self.sent.pop_front() {
            match oldest.try_into_mut() {
                Ok(mut b) if b.capacity() >= FRAME => {
                    b.clear();
                    return b;
                }
                Ok(_) => {}
                // Still queued or being written: newer ones are too.
                Err(held) => {
                    if self.sent.len() + 1 < FRAMES_KEPT {
                        self.sent.push_front(held);
                    }
                }
            }
        }
        BytesMut::with_capacity(FRAME_CAPACITY)
    }

    /// A full frame, to send: a handle stays here for [`Frames::empty`].
    fn send(&mut self, frame: BytesMut) -> Bytes {
        let frame = frame.freeze();
        if self.sent.len() < FRAMES_KEPT {
            self.sent.push_back(frame.clone());
        }
        frame
    }
}

/// S3's largest single PutObject.
const MAX_SINGLE_PUT: u64 = 5 << 30;
/// S3's limit on parts per multipart upload.
const MAX_PARTS: i32 = 10_000;

impl ObjectStore {
    /// Store a streamed body under `key` with memory bounded by about one
    /// [`PART_SIZE`]: a body of at most one part is sent with PutObject, a
    /// larger one as a multipart upload of `PART_SIZE` parts. A body that fails,
    /// or grows past `opts.max_bytes`, aborts the upload so nothing is stored;
    /// if this future is dropped mid-upload (client gone, shutdown), the abort
    /// runs on a spawned task.
    pub async fn put_object_stream<S, E>(
        &self,
        bucket: &str,
        key: &ObjectKey,
        body: S,
        opts: &PutOptions,
    ) -> Result<PutOutcome, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if let Some(length) = opts.declared_length.filter(|n| *n > PART_SIZE as u64 && *n <= MAX_SINGLE_PUT) {
            return self.put_through(bucket, key, length, body, opts).await;
        }
        let mut upload: Option<MultipartUpload> = None;
        let result = self.put_parts(bucket, key, body, opts, &mut upload).await;
        if result.is_err()
            && let Some(mp) = upload.take()
        {
            mp.abort().await;
        }
        result
    }

    /// One PutObject of exactly `length` bytes, streamed as they arrive. A
    /// body that fails, ends short or runs long makes the store refuse it.
    async fn put_through<S, E>(
        &self,
        bucket: &str,
        key: &ObjectKey,
        length: u64,
        body: S,
        opts: &PutOptions,
    ) -> Result<PutOutcome, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if length > opts.max_bytes {
            return Err(S3Error::TooLarge { limit: opts.max_bytes });
        }
        // The SDK needs a 'static body: the stream is bridged through a
        // small channel, so this future keeps borrowing `body`.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
        let rx = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let sized = SizedBody { inner: Box::pin(rx), remaining: length };
        let send = self
            .put_request(bucket, key, opts, length)
            .body(ByteStream::from_body_1_x(sized))
            .customize()
            .config_override(streaming_override())
            .send();
        let feed = async move {
            // A chunk of PASS_THROUGH bytes or more goes on as it is, without
            // a copy (the HTTP server reads up to ~400 KiB at a time from a
            // fast client); smaller ones are gathered into frames of FRAME
            // bytes (fewer, larger writes to the store). At most 8 chunks or
            // frames wait for the store. A frame is allocated at its full
            // size (growing it from empty would copy every byte again on
            // each doubling) and reused once written.
            let mut body = std::pin::pin!(body);
            let mut frames = Frames::default();
            let mut frame = BytesMut::new();
            loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        let out = if chunk.len() >= PASS_THROUGH {
                            if !frame.is_empty() && tx.send(Ok(frames.send(std::mem::take(&mut frame)))).await.is_err()
                            {
                                return None;
                            }
                            Some(chunk)
                        } else {
                            if frame.capacity() == 0 {
                                frame = frames.empty();
                            }
                            frame.extend_from_slice(&chunk);
                            (frame.len() >= FRAME).then(|| frames.send(std::mem::take(&mut frame)))
                        };
                        if let Some(out) = out
                            && tx.send(Ok(out)).await.is_err()
                        {
                            return None;
                        }
                    }
                    Some(Err(e)) => {
                        let e = e.to_string();
                        let _ = tx.send(Err(e.clone())).await;
                        return Some(e);
                    }
                    None => {
                        if !frame.is_empty() {
                            let _ = tx.send(Ok(frame.freeze())).await;
                        }
                        return None;
                    }
                }
            }
        };
        let (out, failed) = futures::join!(send, feed);
        if let Some(e) = failed {
            return Err(S3Error::Body(e));
        }
        let out = out.map_err(|e| S3Error::classify("put object", e))?;
        Ok(PutOutcome { size: length, etag: out.e_tag().map(str::to_owned), parts: 0 })
    }

    /// A PutObject of `length` bytes with the options' content type and
    /// metadata (as known now), without its body.
    fn put_request(
        &self,
        bucket: &str,
        key: &ObjectKey,
        opts: &PutOptions,
        length: u64,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key.as_str())
            .set_content_type(opts.content_type.clone())
            .set_metadata(Some(opts.late_metadata.merged(&opts.metadata)))
            .content_length(i64::try_from(length).unwrap_or(i64::MAX))
    }

    async fn put_parts<S, E>(
        &self,
        bucket: &str,
        key: &ObjectKey,
        body: S,
        opts: &PutOptions,
        upload: &mut Option<MultipartUpload>,
    ) -> Result<PutOutcome, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        // Sized from Content-Length when known; otherwise it doubles up to one
        // part (64 KiB × 2⁷ = 8 MiB), never beyond.
        let first = opts.declared_length.map_or(64 << 10, |n| usize::try_from(n).unwrap_or(PART_SIZE).min(PART_SIZE));
        let mut buf = BytesMut::with_capacity(first);
        let mut total: u64 = 0;
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|e| S3Error::Body(e.to_string()))?;
            total += chunk.len() as u64;
            if total > opts.max_bytes {
                return Err(S3Error::TooLarge { limit: opts.max_bytes });
            }
            while !chunk.is_empty() {
                if buf.len() == PART_SIZE {
                    // A full buffer with more data behind it: a real part.
                    let part = std::mem::replace(&mut buf, BytesMut::with_capacity(PART_SIZE)).freeze();
                    let mp = match upload {
                        Some(mp) => mp,
                        None => upload.insert(self.create_upload(bucket, key, opts).await?),
                    };
                    mp.upload_part(part).await?;
                }
                let take = (PART_SIZE - buf.len()).min(chunk.len());
                buf.extend_from_slice(&chunk.split_to(take));
            }
        }
        match upload.take() {
            None => {
                let out = self
                    .put_request(bucket, key, opts, buf.len() as u64)
                    .body(ByteStream::from(buf.freeze()))
                    .send()
                    .await
                    .map_err(|e| S3Error::classify("put object", e))?;
                Ok(PutOutcome { size: total, etag: out.e_tag().map(str::to_owned), parts: 0 })
            }
            Some(mut mp) => {
                // The last part may be short but is never empty.
                let sent = mp.upload_part(buf.freeze()).await;
                match sent {
                    Ok(()) => mp.complete(total).await,
                    Err(e) => {
                        mp.abort().await;
                        Err(e)
                    }
                }
            }
        }
    }

    async fn create_upload(
        &self,
        bucket: &str,
        key: &ObjectKey,
        opts: &PutOptions,
    ) -> Result<MultipartUpload, S3Error> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key.as_str())
            .set_content_type(opts.content_type.clone())
            .set_metadata(Some(opts.metadata.clone()))
            .send()
            .await
            .map_err(|e| S3Error::classify("create multipart upload", e))?;
        let upload_id = out.upload_id().ok_or_else(|| S3Error::Refused {
            op: "create multipart upload",
            code: None,
            message: "the store returned no upload id".into(),
        })?;
        Ok(MultipartUpload {
            client: self.client.clone(),
            bucket: bucket.to_owned(),
            key: key.as_str().to_owned(),
            upload_id: upload_id.to_owned(),
            parts: Vec::new(),
            open: true,
        })
    }
}

/// A multipart upload in progress. Dropped while still open (the request was
/// cancelled), it aborts itself on a spawned task so no parts linger.
struct MultipartUpload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    open: bool,
}

impl MultipartUpload {
    async fn upload_part(&mut self, data: Bytes) -> Result<(), S3Error> {
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        if number > MAX_PARTS {
            return Err(S3Error::TooLarge { limit: PART_SIZE as u64 * MAX_PARTS as u64 });
        }
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(i64::try_from(data.len()).unwrap_or(i64::MAX))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| S3Error::classify("upload part", e))?;
        self.parts.push(CompletedPart::builder().set_e_tag(out.e_tag().map(str::to_owned)).part_number(number).build());
        Ok(())
    }

    async fn complete(mut self, size: u64) -> Result<PutOutcome, S3Error> {
        let parts = std::mem::take(&mut self.parts);
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(done)
            .send()
            .await;
        match out {
            Ok(out) => {
                self.open = false;
                Ok(PutOutcome { size, etag: out.e_tag().map(str::to_owned), parts: count })
            }
            Err(e) => {
                let err = S3Error::classify("complete multipart upload", e);
                self.abort().await;
                Err(err)
            }
        }
    }

    /// Abort and log a failure to do so (the caller already has an error to report).
    async fn abort(mut self) {
        self.open = false;
        abort_upload(self.client.clone(), &self.bucket, &self.key, &self.upload_id).await;
    }
}

impl Drop for MultipartUpload {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let (client, bucket, key, id) =
            (self.client.clone(), self.bucket.clone(), std::mem::take(&mut self.key), self.upload_id.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { abort_upload(client, &bucket, &key, &id).await });
            }
            Err(_) => {
                tracing::warn!(bucket = %bucket, upload_id = %id, "multipart upload left open: no runtime to abort it")
            }
        }
    }
}

async fn abort_upload(client: Client, bucket: &str, key: &str, upload_id: &str) {
    let res = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await;
    if let Err(e) = res {
        tracing::warn!(bucket, upload_id, error = %DisplayErrorContext(&e), "abort multipart upload");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> BytesMut {
        let mut b = BytesMut::with_capacity(FRAME_CAPACITY);
        b.resize(FRAME, 7);
        b
    }

    #[test]
    fn a_written_frame_is_reused_and_a_held_one_is_not() {
        let mut frames = Frames::default();
        let first = frames.send(full());
        let addr = first.as_ptr();
        // Still held by the store's connection: a new buffer.
        let b = frames.empty();
        assert_ne!(b.as_ptr(), addr);
        assert!(b.is_empty() && b.capacity() >= FRAME);
        // Written and dropped: the same buffer comes back, empty.
        drop(first);
        let again = frames.empty();
        assert_eq!(again.as_ptr(), addr);
        assert!(again.is_empty() && again.capacity() >= FRAME);
    }

    #[test]
    fn at_most_frames_kept_are_held() {
        let mut frames = Frames::default();
        let in_flight: Vec<Bytes> = (0..FRAMES_KEPT * 2).map(|_| frames.send(full())).collect();
        assert_eq!(frames.sent.len(), FRAMES_KEPT);
        for _ in 0..FRAMES_KEPT * 2 {
            let _ = frames.empty();
            assert!(frames.sent.len() <= FRAMES_KEPT);
        }
        drop(in_flight);
    }
}
