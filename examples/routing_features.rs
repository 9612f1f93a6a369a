//! Frozen-encoder features of labelled images, for routing studies outside the runner: for each line
//! `LABEL<TAB>IMAGE` of a list, LiteMedSAM's image embedding (256 x 64 x 64) summarised three ways and written as
//! one CSV row `LABEL,WIDTH,HEIGHT,<256 spatial means>,<256 spatial standard deviations>,<4 x 256 quadrant means>`.
//! The spatial mean is what EvoSAM's matcher routes on; the other two are candidates.
//!
//!     cargo run --release --locked --example routing_features -- LIST.tsv OUT.csv
//!
//! `scripts/routing_features.py` makes the list (Kvasir-SEG's pseudo-sites of the stress suite) and scores ridge
//! and nearest-mean routing on each summary at 3, 5 and 10 images per site (docs/evosam-stress.md).

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, D};
use evosam::model::LiteMedSam;
use evosam::preprocess::{load_image, to_model_input};
use evosam::weights::resolve_weights;

fn main() -> evosam::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, list, out] = &args[..] else {
        return Err(evosam::Error::input(
            "usage: routing_features LIST.tsv OUT.csv",
        ));
    };
    let list =
        std::fs::read_to_string(list).map_err(|e| evosam::Error::input(format!("{list}: {e}")))?;
    let model = LiteMedSam::from_pth(&resolve_weights(None)?, &Device::Cpu)?;
    let mut rows = Vec::new();
    for line in list.lines().filter(|l| !l.is_empty()) {
        let Some((label, path)) = line.split_once('\t') else {
            return Err(evosam::Error::input(format!("not LABEL<TAB>IMAGE: {line}")));
        };
        let img = load_image(Path::new(path))?;
        let (x, _) = to_model_input(&img, model.input_size())?;
        let e = model
            .encode(&x.unsqueeze(0)?)?
            .to_dtype(DType::F32)?
            .squeeze(0)?;
        let mean = e.mean((1, 2))?;
        let std = e
            .flatten_from(1)?
            .broadcast_sub(&mean.unsqueeze(1)?)?
            .sqr()?
            .mean(D::Minus1)?
            .sqrt()?;
        let half = e.dim(1)? / 2;
        let mut row: Vec<f32> = mean.to_vec1()?;
        row.extend(std.to_vec1::<f32>()?);
        for (r, c) in [(0, 0), (0, half), (half, 0), (half, half)] {
            row.extend(
                e.narrow(1, r, half)?
                    .narrow(2, c, half)?
                    .mean((1, 2))?
                    .to_vec1::<f32>()?,
            );
        }
        let values: Vec<String> = row.iter().map(f32::to_string).collect();
        rows.push(format!(
            "{label},{},{},{}\n",
            img.width,
            img.height,
            values.join(",")
        ));
        eprint!("\r{} images", rows.len());
    }
    eprintln!();
    let mut f =
        std::fs::File::create(out).map_err(|e| evosam::Error::input(format!("{out}: {e}")))?;
    f.write_all(rows.concat().as_bytes())
        .map_err(|e| evosam::Error::input(format!("{out}: {e}")))?;
    Ok(())
}
