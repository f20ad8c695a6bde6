//! Random-hyperplane LSH (SimHash) and exact cosine similarity.
//!
//! A vector's code in table `t` is the signs of its dot products with `bits`
//! Gaussian hyperplanes. Two vectors at angle θ agree on one bit with
//! probability 1 − θ/π, so with 16 tables × 12 bits a neighbour at cosine 0.95
//! shares at least one bucket with probability ≈ 0.995 (at 0.99: > 0.9999).
//! For thresholds below [`MULTIPROBE_BELOW`] lookups also probe every bucket
//! one bit away, which keeps recall up at lower thresholds.
//!
//! Hyperplanes come from a fixed-seed SplitMix64 stream keyed by (dimension,
//! tables, bits), so every gateway instance — and every build — derives the
//! same ones; they are computed once per dimension and kept in a byte-bounded
//! LRU ([`PlaneCache`]), so tenants choosing many large dimensions cost CPU to
//! regenerate planes, never unbounded memory.

use std::sync::{Arc, Mutex};

/// Below this threshold lookups also probe the buckets one bit away.
pub const MULTIPROBE_BELOW: f32 = 0.9;

/// The hyperplanes of one (dimension, tables, bits).
#[derive(Debug)]
pub struct Planes {
    dim: usize,
    tables: usize,
    bits: usize,
    /// `tables × bits` rows of `dim` floats.
    normals: Vec<f32>,
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn gaussian(&mut self) -> f32 {
        let (u1, u2) = (self.unit(), self.unit());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

impl Planes {
    pub fn generate(dim: usize, tables: usize, bits: usize) -> Self {
        let seed = 0x5_1u64 << 56 ^ (dim as u64) << 16 ^ (tables as u64) << 8 ^ bits as u64;
        let mut rng = SplitMix64(seed);
        let normals = (0..dim * tables * bits).map(|_| rng.gaussian()).collect();
        Self { dim, tables, bits, normals }
    }

    /// The code of `v` in each table.
    pub fn codes(&self, v: &[f32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.tables);
        let mut rows = self.normals.chunks_exact(self.dim);
        for _ in 0..self.tables {
            let mut code = 0u32;
            for b in 0..self.bits {
                let Some(row) = rows.next() else { break };
                if dot(row, v) >= 0.0 {
                    code |= 1 << b;
                }
            }
            out.push(code);
        }
        out
    }

    /// Bucket names (`{table}:{code}`) to write an entry under.
    pub fn buckets(&self, v: &[f32]) -> Vec<String> {
        self.codes(v).iter().enumerate().map(|(t, c)| format!("{t}:{c:x}")).collect()
    }

    /// Bucket names to probe for a lookup at `threshold`.
    pub fn probes(&self, v: &[f32], threshold: f32) -> Vec<String> {
        let codes = self.codes(v);
        let multi = threshold < MULTIPROBE_BELOW;
        let mut out = Vec::with_capacity(codes.len() * if multi { self.bits + 1 } else { 1 });
        for (t, c) in codes.iter().enumerate() {
            out.push(format!("{t}:{c:x}"));
            if multi {
                out.extend((0..self.bits).map(|b| format!("{t}:{:x}", c ^ (1 << b))));
            }
        }
        out
    }
}

/// Bytes of hyperplanes kept per process, whatever dimensions tenants use
/// (a 16,000-dimension set of 8 × 16 planes is 8 MiB).
pub const MAX_PLANE_BYTES: usize = 64 << 20;

/// Hyperplanes per (dim, tables, bits), least recently used evicted past
/// [`MAX_PLANE_BYTES`]; evicted ones are generated again when next needed
/// (they are deterministic).
pub struct PlaneCache {
    inner: Mutex<Lru>,
    max_bytes: usize,
}

struct Lru {
    planes: lru::LruCache<(usize, usize, usize), Arc<Planes>>,
    bytes: usize,
}

impl Default for PlaneCache {
    fn default() -> Self {
        Self::with_capacity(MAX_PLANE_BYTES)
    }
}

impl PlaneCache {
    pub fn with_capacity(max_bytes: usize) -> Self {
        Self { inner: Mutex::new(Lru { planes: lru::LruCache::unbounded(), bytes: 0 }), max_bytes }
    }

    /// Bytes of hyperplanes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().map_or(0, |l| l.bytes)
    }

    /// The planes if they are held now (never generates).
    pub fn cached(&self, dim: usize, tables: usize, bits: usize) -> Option<Arc<Planes>> {
        self.inner.lock().ok()?.planes.get(&(dim, tables, bits)).cloned()
    }

    pub fn get(&self, dim: usize, tables: usize, bits: usize) -> Arc<Planes> {
        let key = (dim, tables, bits);
        if let Ok(mut l) = self.inner.lock()
            && let Some(p) = l.planes.get(&key)
        {
            return p.clone();
        }
        let p = Arc::new(Planes::generate(dim, tables, bits));
        let size = p.normals.len() * std::mem::size_of::<f32>();
        if size <= self.max_bytes
            && let Ok(mut l) = self.inner.lock()
            && !l.planes.contains(&key)
        {
            while l.bytes + size > self.max_bytes {
                match l.planes.pop_lru() {
                    Some((_, old)) => l.bytes -= old.normals.len() * std::mem::size_of::<f32>(),
                    None => break,
                }
            }
            l.planes.put(key, p.clone());
            l.bytes += size;
        }
        p
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Exact cosine similarity (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (dot(a, a).sqrt(), dot(b, b).sqrt());
    if na == 0.0 || nb == 0.0 || a.len() != b.len() {
        return 0.0;
    }
    (f64::from(dot(a, b)) / (f64::from(na) * f64::from(nb))) as f32
}

/// f32 little-endian bytes, as stored in Redis.
pub fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`to_bytes`]; `None` if the length is not a multiple of 4.
pub fn from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_cache_stays_within_its_bytes() {
        // 30 dimensions near 16,000 (8 × 16 planes each, 8 MiB a set) in a 20 MiB cache.
        let cache = PlaneCache::with_capacity(20 << 20);
        for dim in 15_970..16_000 {
            let p = cache.get(dim, 8, 16);
            assert_eq!(p.normals.len(), dim * 8 * 16);
            assert!(cache.bytes() <= 20 << 20, "{} bytes held", cache.bytes());
        }
        // Evicted planes come back the same.
        let again = cache.get(15_970, 8, 16);
        assert_eq!(again.normals, Planes::generate(15_970, 8, 16).normals);
        // A set larger than the whole cache is used, not kept.
        let tiny = PlaneCache::with_capacity(1 << 10);
        assert_eq!(tiny.get(64, 8, 16).normals.len(), 64 * 8 * 16);
        assert_eq!(tiny.bytes(), 0);
    }

    #[test]
    fn planes_are_deterministic() {
        let a = Planes::generate(8, 4, 6);
        let b = Planes::generate(8, 4, 6);
        assert_eq!(a.normals, b.normals);
        assert_ne!(a.normals, Planes::generate(9, 4, 6).normals[..8 * 4 * 6]);
    }

    #[test]
    fn near_vectors_share_a_bucket() {
        let p = Planes::generate(64, 16, 12);
        let mut rng = SplitMix64(7);
        let mut shared = 0;
        for _ in 0..200 {
            let a: Vec<f32> = (0..64).map(|_| rng.gaussian()).collect();
            // b = a + small noise: cosine around 0.99.
            let b: Vec<f32> = a.iter().map(|x| x + 0.14 * rng.gaussian()).collect();
            assert!(cosine(&a, &b) > 0.97);
            let (ca, cb) = (p.codes(&a), p.codes(&b));
            shared += usize::from(ca.iter().zip(&cb).any(|(x, y)| x == y));
        }
        assert!(shared >= 198, "{shared}/200");
    }

    #[test]
    fn bytes_round_trip_and_cosine() {
        let v = vec![1.0f32, -2.5, 3.25];
        assert_eq!(from_bytes(&to_bytes(&v)), Some(v.clone()));
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&v, &[0.0, 0.0, 0.0]), 0.0);
        assert!(from_bytes(&[1, 2, 3]).is_none());
    }

    #[test]
    fn multiprobe_adds_neighbours() {
        let p = Planes::generate(4, 2, 3);
        assert_eq!(p.probes(&[1.0, 0.0, 0.0, 0.0], 0.95).len(), 2);
        assert_eq!(p.probes(&[1.0, 0.0, 0.0, 0.0], 0.8).len(), 8);
    }
}
