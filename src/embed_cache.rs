//! Frozen-encoder embedding cache: each image's embedding is computed once and reused across epochs
//! and strategies. Entries live in memory (f16) and on disk under
//! `DIR/<weights sha256 prefix>/<key>.safetensors` (f16), keyed by the image's content hash and the
//! weights hash, so a rerun does not recompute them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::model::LiteMedSam;
use crate::{Error, Result};

/// The cache of one model's embeddings (see the module documentation); shareable between threads.
pub struct EmbeddingCache {
    dir: PathBuf,
    weights_sha256: String,
    mem: Mutex<HashMap<String, Tensor>>,
    keep_in_memory: bool,
    hits: AtomicUsize,
    disk_hits: AtomicUsize,
    computed: AtomicUsize,
}

fn file_key(key: &str) -> String {
    if !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_string()
    } else {
        hex::encode(Sha256::digest(key.as_bytes()))
    }
}

impl EmbeddingCache {
    /// A cache in `dir` for the model whose weights hash is `weights_sha256` (for random test models,
    /// any string that identifies config and seed).
    pub fn new(dir: &Path, weights_sha256: &str) -> Result<Self> {
        let sub = dir.join(&file_key(weights_sha256)[..16.min(file_key(weights_sha256).len())]);
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        Ok(Self {
            dir: sub,
            weights_sha256: weights_sha256.to_string(),
            mem: Mutex::new(HashMap::new()),
            keep_in_memory: true,
            hits: AtomicUsize::new(0),
            disk_hits: AtomicUsize::new(0),
            computed: AtomicUsize::new(0),
        })
    }

    /// The same cache, keeping no entry in memory: every read goes to disk (for sets of embeddings larger than
    /// memory, e.g. the tiles of large images).
    pub fn without_memory(mut self) -> Self {
        self.keep_in_memory = false;
        self
    }

    /// The stored embedding of `key` (f16, on the CPU) from memory or disk, or None; nothing is computed.
    pub fn read(&self, key: &str) -> Result<Option<Tensor>> {
        self.lookup(key)
    }

    /// The folder of this model's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (memory hits, disk hits, computed).
    pub fn stats(&self) -> (usize, usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.disk_hits.load(Ordering::Relaxed),
            self.computed.load(Ordering::Relaxed),
        )
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.safetensors", file_key(key)))
    }

    fn lookup(&self, key: &str) -> Result<Option<Tensor>> {
        if let Some(t) = self.mem.lock().expect("cache lock").get(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(t.clone()));
        }
        let p = self.path(key);
        if p.is_file() {
            let loaded = candle_core::safetensors::load(&p, &Device::Cpu);
            // A foreign or damaged file is recomputed and overwritten by rename (not removed here: on a shared
            // cache another process may have just renamed a good one into place).
            if let Some(t) = loaded.ok().and_then(|mut m| m.remove("emb")) {
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                if self.keep_in_memory {
                    self.mem
                        .lock()
                        .expect("cache lock")
                        .insert(key.to_string(), t.clone());
                }
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    fn store(&self, key: &str, emb: &Tensor) -> Result<Tensor> {
        let h = emb
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F16)?
            .contiguous()?;
        let p = self.path(key);
        // A unique temporary name per writer, renamed into place: on a shared cache, processes on several hosts may
        // compute the same entry at once; each rename replaces the file whole, and readers see an old or a new
        // complete file, never a partial one (the two are equal: same image, same weights).
        let tmp = self.dir.join(format!(
            ".{}.{}-{}-{:016x}.tmp",
            file_key(key),
            crate::lock::hostname(),
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut meta = HashMap::new();
        meta.insert("weights_sha256".to_string(), self.weights_sha256.clone());
        meta.insert("key".to_string(), key.to_string());
        if let Err(e) = safetensors::serialize_to_file([("emb", &h)], Some(meta), &tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::internal(format!(
                "{}: writing embedding: {e}",
                tmp.display()
            )));
        }
        std::fs::rename(&tmp, &p).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&p, e)
        })?;
        if self.keep_in_memory {
            self.mem
                .lock()
                .expect("cache lock")
                .insert(key.to_string(), h.clone());
        }
        Ok(h)
    }

    /// The embedding (C, s, s) of one model input `image` (3, S, S), in the model's dtype and device.
    pub fn get_or_compute(&self, model: &LiteMedSam, key: &str, image: &Tensor) -> Result<Tensor> {
        Ok(self
            .get_or_compute_batch(model, &[key], &image.unsqueeze(0)?)?
            .squeeze(0)?)
    }

    /// Embeddings (B, C, s, s) for a batch; only the missing ones are computed, in one encoder call.
    pub fn get_or_compute_batch(
        &self,
        model: &LiteMedSam,
        keys: &[&str],
        images: &Tensor,
    ) -> Result<Tensor> {
        if keys.len() != images.dim(0)? {
            return Err(Error::internal(format!(
                "{} keys for {} images",
                keys.len(),
                images.dim(0)?
            )));
        }
        let mut out: Vec<Option<Tensor>> =
            keys.iter().map(|k| self.lookup(k)).collect::<Result<_>>()?;
        let missing: Vec<u32> = out
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_none())
            .map(|(i, _)| i as u32)
            .collect();
        if !missing.is_empty() {
            let idx = Tensor::new(missing.as_slice(), images.device())?;
            let emb = model
                .encode(&images.index_select(&idx, 0)?.to_device(&model.device())?)?
                .detach();
            for (j, &i) in missing.iter().enumerate() {
                out[i as usize] = Some(self.store(keys[i as usize], &emb.get(j)?)?);
                self.computed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ts: Vec<Tensor> = out.into_iter().map(|t| t.expect("filled")).collect();
        Ok(Tensor::stack(&ts, 0)?
            .to_device(&model.device())?
            .to_dtype(model.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LiteMedSamConfig;

    /// Several "processes" (separate cache objects on one folder) computing and reading the same entries at once
    /// end with complete, equal entries and no temporary files.
    #[test]
    fn concurrent_writers_and_readers_agree() {
        let dev = Device::Cpu;
        let m = LiteMedSam::random(&LiteMedSamConfig::tiny(), 4, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let imgs = Tensor::rand(0f32, 1.0, (2, 3, 256, 256), &dev).unwrap();
        let outs: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let c = EmbeddingCache::new(dir.path(), "tiny-seed4").unwrap();
                        let mut last = Vec::new();
                        for _ in 0..3 {
                            let c2 = EmbeddingCache::new(dir.path(), "tiny-seed4").unwrap();
                            let e = c2.get_or_compute_batch(&m, &["x", "y"], &imgs).unwrap();
                            last = e.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        }
                        let e = c.get_or_compute_batch(&m, &["x", "y"], &imgs).unwrap();
                        assert_eq!(e.flatten_all().unwrap().to_vec1::<f32>().unwrap(), last);
                        last
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(outs.windows(2).all(|w| w[0] == w[1]));
        let sub = EmbeddingCache::new(dir.path(), "tiny-seed4").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(sub.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x.safetensors", "y.safetensors"]);
    }

    #[test]
    fn computes_once_and_persists() {
        let dev = Device::Cpu;
        let m = LiteMedSam::random(&LiteMedSamConfig::tiny(), 3, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let imgs = Tensor::rand(0f32, 1.0, (2, 3, 256, 256), &dev).unwrap();
        let c = EmbeddingCache::new(dir.path(), "tiny-seed3").unwrap();
        let e = c.get_or_compute_batch(&m, &["a", "b/c"], &imgs).unwrap();
        assert_eq!(e.dims(), &[2, 32, 64, 64]);
        assert_eq!(c.stats(), (0, 0, 2));
        let e0 = c.get_or_compute(&m, "a", &imgs.get(0).unwrap()).unwrap();
        assert_eq!(c.stats(), (1, 0, 2));
        // f16 storage: close to the f32 embedding.
        let direct = m.encode(&imgs).unwrap();
        let d = (direct.get(0).unwrap() - &e0)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-2, "{d}");
        // A new cache object (a rerun) reads from disk.
        let c2 = EmbeddingCache::new(dir.path(), "tiny-seed3").unwrap();
        let e1 = c2.get_or_compute(&m, "b/c", &imgs.get(1).unwrap()).unwrap();
        assert_eq!(c2.stats(), (0, 1, 0));
        let d = (e.get(1).unwrap() - e1)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        // Other weights: a different namespace.
        let c3 = EmbeddingCache::new(dir.path(), "other").unwrap();
        c3.get_or_compute(&m, "a", &imgs.get(0).unwrap()).unwrap();
        assert_eq!(c3.stats(), (0, 0, 1));
    }
}
