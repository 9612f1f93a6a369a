//! Small helpers shared by every layer. This module is a leaf: it imports nothing from the crate except the
//! error type, so any module may use it without creating an import cycle.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// A seed derived from named parts (stable across runs and platforms): the first 8 bytes of the sha256 of the
/// parts, each followed by a zero byte (so `["ab", ""]` and `["a", "b"]` differ).
pub fn derive_seed(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Write a file atomically: a temporary file in the same folder, fsynced, then renamed over `path`. A reader
/// (or a killed run) sees the old contents or the new ones, never a torn file. Creates the folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Linear-interpolation quantile (NumPy's default) of unsorted values, `q` in [0, 1] (clamped); None when empty.
/// Reorders `v`: the order statistics are found by selection, not a full sort (a whole MRI volume's percentiles
/// are O(n)).
pub fn quantile_in_place(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, &mut a, above) = v.select_nth_unstable_by(lo, f64::total_cmp);
    // the next order statistic is the smallest value above position `lo`
    let b = if pos > lo as f64 {
        above.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        a
    };
    Some(a + (b - a) * (pos - lo as f64))
}

/// [`quantile_in_place`] on a copy.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    quantile_in_place(&mut values.to_vec(), q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_numpys_linear() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0], 0.25), Some(1.25));
        assert_eq!(quantile(&[1.0, 2.0], 1.0), Some(2.0));
        assert_eq!(quantile(&[], 0.5), None);
        // numpy.percentile([1, 2, 3, 4, 10], 95) = 4 + 0.8 * 6 = 8.8
        assert!((quantile(&[10.0, 1.0, 3.0, 2.0, 4.0], 0.95).unwrap() - 8.8).abs() < 1e-12);
        assert_eq!(quantile(&[7.0], 0.95), Some(7.0));
    }

    #[test]
    fn seeds_are_stable_and_separated() {
        assert_eq!(derive_seed(&["a", "b"]), derive_seed(&["a", "b"]));
        assert_ne!(derive_seed(&["a", "b"]), derive_seed(&["ab", ""]));
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f.txt");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
    }
}
