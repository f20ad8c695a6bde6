//! Sluice errors as S3 error codes.

use s3s::{S3Error, S3ErrorCode, s3_error};

use crate::objects::ObjectError;
use crate::objects::multipart::UploadError;
use crate::pipeline::PipelineError;
use crate::pipeline::auth::AuthError;
use crate::upstream::s3::S3Error as StoreError;

pub fn auth_error(e: AuthError) -> S3Error {
    match e {
        AuthError::Unknown | AuthError::Revoked | AuthError::Malformed | AuthError::Missing => {
            s3_error!(InvalidAccessKeyId, "The AWS access key Id you provided does not exist in our records.")
        }
        AuthError::Suspended(_) | AuthError::TenantInactive | AuthError::NotAdmin => {
            S3Error::with_message(S3ErrorCode::AccessDenied, e.to_string())
        }
        AuthError::Fenced(_) => S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string()),
        AuthError::Control(e) => internal(&e),
    }
}

pub fn pipeline_error(e: PipelineError) -> S3Error {
    match e {
        PipelineError::RateLimited { .. } => S3Error::with_message(S3ErrorCode::SlowDown, e.to_string()),
        PipelineError::Fenced(_) => S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string()),
        PipelineError::StorageFull(q) => quota(&q),
        PipelineError::Denied { .. } | PipelineError::Refused(_) | PipelineError::PluginFailed(_) => {
            S3Error::with_message(S3ErrorCode::AccessDenied, e.to_string())
        }
    }
}

fn quota(q: &crate::usage::QuotaExceeded) -> S3Error {
    // S3 has no code for a full quota; MinIO and others answer 403 with a
    // code of their own.
    let mut e = S3Error::with_message(S3ErrorCode::Custom("QuotaExceeded".into()), q.to_string());
    e.set_status_code(http::StatusCode::FORBIDDEN);
    e
}

pub fn store_error(e: StoreError) -> S3Error {
    match e {
        StoreError::NotFound => s3_error!(NoSuchKey),
        StoreError::PreconditionFailed => s3_error!(PreconditionFailed),
        StoreError::InvalidRange => s3_error!(InvalidRange),
        StoreError::TooLarge { .. } => S3Error::with_message(S3ErrorCode::EntityTooLarge, e.to_string()),
        StoreError::Body(_) => S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string()),
        // The store's refusals of a client's multipart upload carry the
        // client's own mistakes (e.g. a part under 5 MiB).
        StoreError::Refused { code: Some(ref code), .. }
            if matches!(code.as_str(), "EntityTooSmall" | "InvalidPart" | "InvalidPartOrder" | "NoSuchUpload") =>
        {
            S3Error::with_message(
                S3ErrorCode::from_bytes(code.as_bytes()).unwrap_or(S3ErrorCode::InvalidRequest),
                code.clone(),
            )
        }
        e => internal(&e),
    }
}

pub fn object_error(e: ObjectError) -> S3Error {
    match e {
        ObjectError::Store(e) => store_error(e),
        ObjectError::Quota(q) => quota(&q),
        ObjectError::Pipeline(e) => pipeline_error(e),
        ObjectError::Hold(e) => match e {
            crate::backup::hold::HoldError::Store(e) => store_error(e),
            e => S3Error::with_message(S3ErrorCode::SlowDown, e.to_string()),
        },
        ObjectError::Control(e) => internal(&e),
    }
}

pub fn upload_error(e: UploadError) -> S3Error {
    match e {
        UploadError::Object(e) => object_error(e),
        UploadError::NoSuchUpload => S3Error::with_message(S3ErrorCode::NoSuchUpload, e.to_string()),
        UploadError::InvalidPart(_) => S3Error::with_message(S3ErrorCode::InvalidPart, e.to_string()),
        UploadError::InvalidPartOrder => S3Error::with_message(S3ErrorCode::InvalidPartOrder, e.to_string()),
        UploadError::TooManyUploads { .. } => {
            // As a full quota: 403 with a code of its own.
            let mut err = S3Error::with_message(S3ErrorCode::Custom("TooManyUploads".into()), e.to_string());
            err.set_status_code(http::StatusCode::FORBIDDEN);
            err
        }
        UploadError::InvalidArgument(_) => S3Error::with_message(S3ErrorCode::InvalidArgument, e.to_string()),
    }
}

fn internal(e: &dyn std::fmt::Display) -> S3Error {
    tracing::warn!(error = %e, "S3 door: internal error");
    s3_error!(InternalError)
}
