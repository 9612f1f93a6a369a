//! The absorbed attention paths against the standard one, in f64: outputs, and the gradients of every input,
//! weight and LoRA factor.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::{Attention, AttnPath};
use crate::model::kernels::tests::{max_abs, var};
use crate::model::lora::{Adapter, AdapterHost, LoraConfig};

/// The layers of one attention module as an adapter host.
struct Host(Vec<(String, usize, usize)>);

impl AdapterHost for Host {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn dtype(&self) -> DType {
        DType::F64
    }
    fn linear_sites(&self) -> Vec<(String, usize, usize)> {
        self.0.clone()
    }
}

/// `path` and the standard path agree on (nq, nk) tokens, with and without a LoRA adapter on all four
/// projections; every gradient that one path makes the other makes too, except that a bias the path shows
/// cannot matter (the key bias of few-queries attention, which the softmax cancels) must have a zero gradient.
fn agrees(path: AttnPath, nq: usize, nk: usize) {
    let dev = Device::Cpu;
    let (dim, heads) = (16, 2);
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
    let att = Attention::new(dim, heads, 2, vb.pp("attn")).unwrap();
    // VarMap's default initialisation leaves biases at zero: make every weight random.
    for (i, (_, v)) in vm.data().lock().unwrap().iter().enumerate() {
        v.set(var(v.dims(), 100 + i as u64).as_tensor()).unwrap();
    }
    assert_eq!(att.path(nq, nk), path, "the size rule picks {path:?}");
    let host = Host(
        ["q_proj", "k_proj", "v_proj", "out_proj"]
            .iter()
            .map(|p| {
                let l = match *p {
                    "q_proj" => &att.q_proj,
                    "k_proj" => &att.k_proj,
                    "v_proj" => &att.v_proj,
                    _ => &att.out_proj,
                };
                (l.path.clone(), l.in_dim(), l.out_dim())
            })
            .collect(),
    );
    let cfg = LoraConfig {
        rank: 2,
        alpha: 3.0,
        targets: vec!["attn".into()],
    };
    let ad = Adapter::new(&host, &cfg, 7).unwrap();
    for (i, v) in ad.vars().iter().enumerate() {
        v.set(var(v.dims(), 200 + i as u64).as_tensor()).unwrap();
    }
    let (q, k, v) = (
        var(&[2, nq, dim], 1),
        var(&[2, nk, dim], 2),
        var(&[2, nk, dim], 3),
    );
    let r = Tensor::randn(0f64, 1.0, (2, nq, dim), &dev).unwrap();
    for adapter in [None, Some(&ad)] {
        let run = |p: AttnPath| {
            att.forward_by(p, q.as_tensor(), k.as_tensor(), v.as_tensor(), adapter)
                .unwrap()
        };
        let (y0, y1) = (run(AttnPath::Standard), run(path));
        let d = max_abs(&y0, &y1);
        assert!(d < 1e-12, "{path:?}: outputs differ by {d}");
        let g0 = (&y0 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g1 = (&y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars: Vec<(String, Var)> = vec![
            ("q".into(), q.clone()),
            ("k".into(), k.clone()),
            ("v".into(), v.clone()),
        ];
        vars.extend(
            vm.data()
                .lock()
                .unwrap()
                .iter()
                .map(|(n, v)| (n.clone(), v.clone())),
        );
        if adapter.is_some() {
            vars.extend(ad.named_vars());
        }
        for (name, var) in vars {
            let t = var.as_tensor();
            match (g0.get(t), g1.get(t)) {
                (Some(a), Some(b)) => {
                    let d = max_abs(a, b);
                    assert!(d < 1e-10, "{path:?} {name}: gradients differ by {d}");
                }
                (Some(a), None) => {
                    let d = max_abs(a, &a.zeros_like().unwrap());
                    assert!(
                        name.ends_with("k_proj.bias") && d < 1e-12,
                        "{path:?} {name}: no gradient, the standard path's is {d}"
                    );
                }
                (None, _) => panic!("{path:?} {name}: no standard gradient"),
            }
        }
    }
}

#[test]
fn few_queries_attention_equals_the_standard_path() {
    agrees(AttnPath::FewQueries, 3, 300);
}

#[test]
fn few_keys_attention_equals_the_standard_path() {
    agrees(AttnPath::FewKeys, 300, 3);
}

#[test]
fn the_size_rule_keeps_the_standard_path_where_absorbing_costs_more() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    // SAM's decoder: 256 wide, 8 heads, internal 128.
    let att = Attention::new(256, 8, 2, vb).unwrap();
    assert_eq!(att.path(7, 4096), AttnPath::FewQueries);
    assert_eq!(att.path(4096, 7), AttnPath::FewKeys);
    // 16 tokens x 8 heads is the internal width: projecting the image is as cheap.
    assert_eq!(att.path(16, 4096), AttnPath::Standard);
    assert_eq!(att.path(4096, 16), AttnPath::Standard);
    // Token self-attention.
    assert_eq!(att.path(7, 7), AttnPath::Standard);
}
