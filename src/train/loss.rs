//! Losses for box-prompted segmentation, as LiteMedSAM's training: soft Dice + binary cross-entropy
//! on the logits, plus the MSE between the predicted IoU and the IoU of the thresholded prediction.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::model::DecoderOutput;
use crate::{Error, Result};

/// Weights of the loss terms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    /// Weight of the soft Dice loss.
    pub dice: f64,
    /// Weight of the binary cross-entropy on the logits.
    pub bce: f64,
    /// Weight of the IoU-prediction MSE.
    pub iou: f64,
}

impl Default for LossWeights {
    /// LiteMedSAM's recipe: Dice + BCE + IoU-prediction MSE, all weight 1.
    fn default() -> Self {
        Self {
            dice: 1.0,
            bce: 1.0,
            iou: 1.0,
        }
    }
}

/// Mean binary cross-entropy with logits, stable for large |x|: max(x,0) - x*y + log(1 + exp(-|x|)).
pub fn stable_bce_with_logits(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let y = y.to_dtype(x.dtype())?;
    let l = ((x.relu()? - (x * &y)?)? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(l.mean_all()?)
}

/// Soft Dice loss on sigmoid(x), per sample over all non-batch dims, averaged over the batch:
/// 1 - (2 sum(p y) + eps) / (sum p + sum y + eps), eps = 1e-6.
pub fn soft_dice_loss(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    let p = candle_nn::ops::sigmoid(x)?.reshape((b, ()))?;
    let y = y.to_dtype(x.dtype())?.reshape((b, ()))?;
    let eps = 1e-6;
    let inter = (&p * &y)?.sum(D::Minus1)?;
    let union = (p.sum(D::Minus1)? + y.sum(D::Minus1)?)?;
    let dice = ((inter * 2.0)? + eps)?.div(&(union + eps)?)?;
    Ok((1.0 - dice)?.mean_all()?)
}

/// MSE between the predicted IoU (B, 1) and the (detached) IoU of `logits > 0` with the target.
pub fn iou_mse_loss(logits: &Tensor, iou_pred: &Tensor, y: &Tensor) -> Result<Tensor> {
    let b = logits.dim(0)?;
    let pred = logits
        .detach()
        .gt(0.0)?
        .to_dtype(logits.dtype())?
        .reshape((b, ()))?;
    let y = y.to_dtype(logits.dtype())?.reshape((b, ()))?;
    let inter = (&pred * &y)?.sum(D::Minus1)?;
    let union = ((pred.sum(D::Minus1)? + y.sum(D::Minus1)?)? - &inter)?;
    let iou = (inter / (union + 1e-6)?)?.reshape((b, 1))?;
    Ok((iou_pred - iou)?.sqr()?.mean_all()?)
}

/// The weighted sum of the three terms; the result is a scalar tensor.
pub fn seg_loss(out: &DecoderOutput, target: &Tensor, w: &LossWeights) -> Result<Tensor> {
    if out.logits.dims() != target.dims() {
        return Err(Error::internal(format!(
            "target {:?} does not match logits {:?}",
            target.dims(),
            out.logits.dims()
        )));
    }
    let mut total = match super::fused_loss::dice_bce(&out.logits, target, w.dice, w.bce)? {
        Some(t) => t,
        None => {
            let mut t = (soft_dice_loss(&out.logits, target)? * w.dice)?;
            if w.bce != 0.0 {
                t = (t + (stable_bce_with_logits(&out.logits, target)? * w.bce)?)?;
            }
            t
        }
    };
    if w.iou != 0.0 {
        total = (total + (iou_mse_loss(&out.logits, &out.iou, target)? * w.iou)?)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn bce_matches_hand_values_and_is_stable() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.0f64, 2.0, -3.0, 1000.0, -1000.0], &dev).unwrap();
        let y = Tensor::new(&[1.0f64, 0.0, 0.0, 1.0, 0.0], &dev).unwrap();
        let got = stable_bce_with_logits(&x, &y)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want =
            (-(sig(0.0)).ln() - (1.0 - sig(2.0)).ln() - (1.0 - sig(-3.0)).ln() + 0.0 + 0.0) / 5.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn dice_and_iou_hand_values() {
        let dev = Device::Cpu;
        // Logits +-50: sigmoid is 0/1 to 1e-22, so Dice is the hard Dice.
        let x = Tensor::new(&[[50.0f64, 50.0, -50.0, -50.0]], &dev).unwrap();
        let y = Tensor::new(&[[1.0f64, 0.0, 1.0, 0.0]], &dev).unwrap();
        let d = soft_dice_loss(&x, &y).unwrap().to_scalar::<f64>().unwrap();
        assert!((d - 0.5).abs() < 1e-6, "{d}"); // 2*1/(2+2)
        let iou_pred = Tensor::new(&[[0.5f64]], &dev).unwrap();
        let m = iou_mse_loss(&x, &iou_pred, &y)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((m - (0.5 - 1.0 / 3.0f64).powi(2)).abs() < 1e-6, "{m}");
    }

    #[test]
    fn loss_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f64, 3.0, (2, 1, 4, 4), &dev).unwrap())).unwrap();
        let iou = Var::from_tensor(&Tensor::new(&[[0.3f64], [0.8]], &dev).unwrap()).unwrap();
        let y = Tensor::rand(0f64, 1.0, (2, 1, 4, 4), &dev)
            .unwrap()
            .gt(0.5)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let w = LossWeights::default();
        let f = |x: &Tensor, i: &Tensor| {
            seg_loss(
                &DecoderOutput {
                    logits: x.clone(),
                    iou: i.clone(),
                },
                &y,
                &w,
            )
            .unwrap()
        };
        let g = f(x.as_tensor(), iou.as_tensor()).backward().unwrap();
        for v in [&x, &iou] {
            let ga: Vec<f64> = g
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for k in 0..base.len() {
                let h = 1e-6;
                let mut p = base.clone();
                p[k] += h;
                v.set(&Tensor::from_vec(p.clone(), v.shape(), &dev).unwrap())
                    .unwrap();
                let fp = f(x.as_tensor(), iou.as_tensor())
                    .to_scalar::<f64>()
                    .unwrap();
                p[k] -= 2.0 * h;
                v.set(&Tensor::from_vec(p, v.shape(), &dev).unwrap())
                    .unwrap();
                let fm = f(x.as_tensor(), iou.as_tensor())
                    .to_scalar::<f64>()
                    .unwrap();
                v.set(&Tensor::from_vec(base.clone(), v.shape(), &dev).unwrap())
                    .unwrap();
                let fd = (fp - fm) / (2.0 * h);
                assert!(
                    (fd - ga[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "elem {k}: fd {fd} vs analytic {}",
                    ga[k]
                );
            }
        }
    }
}
