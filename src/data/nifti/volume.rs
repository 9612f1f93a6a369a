//! Reading NIfTI volumes (values, voxel spacing), MRI intensity clipping, and writing prediction volumes with
//! the input's header (so the affine, and so the patient frame, carry over).

use crate::{Error, Result};
use std::path::Path;

/// A volume as (dims `[X, Y, Z]`, values in logical C order: index (x*Y + y)*Z + z).
pub struct Volume {
    /// Size along x, y, z.
    pub dims: [usize; 3],
    /// Voxel values (scaled by the header's slope and intercept).
    pub data: Vec<f32>,
    /// Voxel size along x, y, z (the header's pixdim, in its unit, mm for MRI; 1 where the header has none).
    pub spacing: [f64; 3],
}

/// Clip a volume's values at its `lo` and `hi` percentiles (0-100, linear interpolation as NumPy's default):
/// MedSAM's MR recipe, which keeps a few bright voxels from setting the intensity scale. Returns the clip values.
pub fn clip_percentiles(data: &mut [f32], lo: f64, hi: f64) -> (f32, f32) {
    if data.is_empty() {
        return (0.0, 0.0);
    }
    let mut scratch: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    let mut at =
        |q: f64| crate::util::quantile_in_place(&mut scratch, q / 100.0).unwrap_or(0.0) as f32;
    let (a, b) = (at(lo), at(hi));
    for v in data.iter_mut() {
        *v = v.clamp(a, b);
    }
    (a, b)
}

/// Write a {0,1} mask volume (dims `[X, Y, Z]`, logical C order as [`Volume`]) as uint8 NIfTI with the header of
/// `reference` (dimensions and data type replaced; affine, pixdim and units kept). Written to a temporary name and
/// renamed, so a reader never sees half a file. `.nii.gz` paths are compressed.
pub fn write_mask_volume(
    path: &Path,
    dims: [usize; 3],
    mask: &[u8],
    reference: &Path,
) -> Result<()> {
    let header = nifti::NiftiHeader::from_file(reference).map_err(|e| {
        Error::input(format!(
            "{}: cannot read NIfTI header: {e}",
            reference.display()
        ))
    })?;
    let arr = ndarray::Array3::from_shape_vec((dims[0], dims[1], dims[2]), mask.to_vec())
        .map_err(|e| Error::internal(format!("prediction volume {dims:?}: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{}-{name}", std::process::id()));
    nifti::writer::WriterOptions::new(&tmp)
        .reference_header(&header)
        .write_nifti(&arr)
        .map_err(|e| Error::internal(format!("{}: writing NIfTI: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A decoded file: shape, values, pixdim[1..=3].
type Decoded = (Vec<usize>, Vec<f32>, [f32; 3]);

/// Read a `.nii`/`.nii.gz` volume as f32 (scaling applied). 4-D volumes with one time point are accepted.
pub fn read_volume(path: &Path) -> Result<Volume> {
    use nifti::{IntoNdArray, NiftiObject};
    let p = path.to_path_buf();
    let res = std::panic::catch_unwind(move || -> std::result::Result<Decoded, String> {
        let obj = nifti::ReaderOptions::new()
            .read_file(&p)
            .map_err(|e| e.to_string())?;
        let pd = obj.header().pixdim;
        let arr = obj
            .into_volume()
            .into_ndarray::<f32>()
            .map_err(|e| e.to_string())?;
        let shape = arr.shape().to_vec();
        let data: Vec<f32> = arr.iter().copied().collect();
        Ok((shape, data, [pd[1], pd[2], pd[3]]))
    });
    let (shape, data, pixdim) = match res {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            return Err(Error::input(format!(
                "{}: cannot read NIfTI: {e}",
                path.display()
            )))
        }
        Err(_) => {
            return Err(Error::input(format!(
                "{}: cannot read NIfTI (corrupt file)",
                path.display()
            )))
        }
    };
    let dims = match shape.as_slice() {
        [x, y] => [*x, *y, 1],
        [x, y, z] => [*x, *y, *z],
        [x, y, z, 1] => [*x, *y, *z],
        s => {
            return Err(Error::input(format!(
                "{}: volume has shape {s:?}; expected 2-D, 3-D or 4-D with one time point",
                path.display()
            )))
        }
    };
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "{}: volume has non-finite values",
            path.display()
        )));
    }
    // a zero or missing pixdim (some converters write none) reads as 1 mm
    let spacing = pixdim.map(|d| {
        let d = (d as f64).abs();
        if d.is_finite() && d > 0.0 {
            d
        } else {
            1.0
        }
    });
    Ok(Volume {
        dims,
        data,
        spacing,
    })
}

/// Write a minimal NIfTI-1 single file (float32 data, x fastest on disk), for the tests.
#[cfg(test)]
pub(crate) fn write_nifti_f32(
    path: &Path,
    dims: [usize; 3],
    data_xyz: impl Fn(usize, usize, usize) -> f32,
) -> Result<()> {
    write_nifti_f32_spaced(path, dims, [1.0; 3], data_xyz)
}

/// [`write_nifti_f32`] with voxel spacing (pixdim) and a matching sform.
#[cfg(test)]
pub(crate) fn write_nifti_f32_spaced(
    path: &Path,
    dims: [usize; 3],
    spacing: [f32; 3],
    data_xyz: impl Fn(usize, usize, usize) -> f32,
) -> Result<()> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let d: [i16; 8] = [
        3,
        dims[0] as i16,
        dims[1] as i16,
        dims[2] as i16,
        1,
        1,
        1,
        1,
    ];
    for (i, v) in d.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[70..72].copy_from_slice(&16i16.to_le_bytes()); // FLOAT32
    h[72..74].copy_from_slice(&32i16.to_le_bytes());
    let pixdim = [1.0, spacing[0], spacing[1], spacing[2], 1.0, 1.0, 1.0, 1.0];
    for (i, v) in pixdim.iter().enumerate() {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    // sform_code 1 (scanner) with a diagonal affine and an offset, so that saved predictions can be checked to
    // carry it
    h[254..256].copy_from_slice(&1i16.to_le_bytes());
    for (row, off) in [(280usize, 0usize), (296, 1), (312, 2)] {
        for c in 0..4 {
            let v = if c == off {
                spacing[off]
            } else if c == 3 {
                -10.0 * (off as f32 + 1.0)
            } else {
                0.0
            };
            h[row + 4 * c..row + 4 * c + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[112..116].copy_from_slice(&1f32.to_le_bytes()); // scl_slope
    h[344..348].copy_from_slice(b"n+1\0");
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                h.extend_from_slice(&data_xyz(x, y, z).to_le_bytes());
            }
        }
    }
    std::fs::write(path, h).map_err(|e| Error::io(path, e))
}
