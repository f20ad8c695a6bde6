//! Virtual-host-style addressing: `<bucket>.<base domain>[:port]` names the
//! bucket; any other host is path-style.
//!
//! Written here rather than using s3s's `SingleDomain`, which takes any other
//! host that looks like a domain (including `127.0.0.1:9080`) for a CNAME
//! bucket name and so breaks path-style access by address; and which compares
//! hosts with their port.

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

/// The configured base domain (lower case, no port).
pub struct BaseDomain {
    domain: String,
}

impl BaseDomain {
    pub fn new(domain: &str) -> Self {
        Self { domain: domain.to_ascii_lowercase() }
    }

    /// The bucket a `Host` header names, if it is `<bucket>.<base domain>`.
    pub fn bucket_of<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let cut = name.len().checked_sub(self.domain.len() + 1)?;
        let (bucket, rest) = name.split_at(cut);
        (rest.strip_prefix('.')?.eq_ignore_ascii_case(&self.domain) && !bucket.is_empty()).then_some(bucket)
    }
}

impl S3Host for BaseDomain {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let vh = VirtualHost::new(self.domain.as_str());
        Ok(match self.bucket_of(host) {
            Some(bucket) => vh.with_bucket(bucket.to_ascii_lowercase()),
            None => vh,
        })
    }
}

/// A domain name: dot-separated labels of letters, digits and `-`.
pub fn valid_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_from_hosts() {
        let d = BaseDomain::new("S3.Example.com");
        assert_eq!(d.bucket_of("acme.s3.example.com"), Some("acme"));
        assert_eq!(d.bucket_of("acme.s3.example.com:9080"), Some("acme"));
        assert_eq!(d.bucket_of("s3.example.com:9080"), None);
        assert_eq!(d.bucket_of("127.0.0.1:9080"), None);
        assert_eq!(d.bucket_of("evil-s3.example.com"), None);
        assert_eq!(d.bucket_of(".s3.example.com"), None);
        assert!(valid_domain("s3.example.com"));
        assert!(!valid_domain("s3.example.com:9080"));
        assert!(!valid_domain("a..b"));
    }
}
