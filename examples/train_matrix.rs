//! Trains vigil's forest on a feature matrix stored as `.npy` files and reports fit time and test
//! AUC; the Rust half of `scripts/bench_sklearn.sh` (which writes the files with numpy).
//!
//! Reads `X_train.npy`, `y_train.npy`, `X_test.npy`, `y_test.npy` from `--data` (`<f4` C-order
//! matrices, `|u1` or `|b1` labels), writes the test scores to `vigil_scores.f32`
//! (little-endian) and prints one JSON line.
//!
//! ```text
//! cargo run --release --example train_matrix -- --data target/sklearn-data --threads 2
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use ndarray::Array2;
use vigil::forest::train::{fit_forest, MaxFeatures, RandomForestParams};

#[derive(Parser)]
struct Args {
    /// Directory holding the four .npy files.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 100)]
    trees: usize,
    #[arg(long, default_value_t = 12)]
    depth: usize,
    #[arg(long, default_value_t = 255)]
    max_bins: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A parsed `.npy` array: shape and raw little-endian payload.
struct Npy {
    descr: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_npy(path: &Path) -> Result<Npy> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() > 10 && bytes.starts_with(b"\x93NUMPY"),
        "{} is not an .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(bytes.len() > 12, "{}: truncated header", path.display());
            let b = [bytes[8], bytes[9], bytes[10], bytes[11]];
            (u32::from_le_bytes(b) as usize, 12)
        }
        v => bail!("{}: unsupported .npy version {v}", path.display()),
    };
    let header = bytes
        .get(start..start + header_len)
        .context("truncated .npy header")?;
    let header = std::str::from_utf8(header).context(".npy header is not UTF-8")?;
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(key)
            .with_context(|| format!("{}: no {key} in header {header}", path.display()))?;
        Ok(header[at + key.len()..].trim_start_matches([':', ' ']))
    };
    ensure!(
        field("'fortran_order'")?.starts_with("False"),
        "{}: Fortran order is not supported",
        path.display()
    );
    let descr = field("'descr'")?
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or_default()
        .to_string();
    let shape_text = field("'shape'")?;
    let shape_text = &shape_text[1..shape_text.find(')').context("bad shape")?];
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .with_context(|| format!("bad shape {shape_text}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Npy {
        descr,
        shape,
        data: bytes[start + header_len..].to_vec(),
    })
}

fn read_matrix(path: &Path) -> Result<Array2<f32>> {
    let npy = read_npy(path)?;
    ensure!(
        npy.descr == "<f4",
        "{}: need <f4, got {}",
        path.display(),
        npy.descr
    );
    let [rows, cols] = npy.shape[..] else {
        bail!(
            "{}: need a 2-d array, got shape {:?}",
            path.display(),
            npy.shape
        );
    };
    ensure!(
        npy.data.len() == rows * cols * 4,
        "{}: truncated data",
        path.display()
    );
    let values = npy
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Array2::from_shape_vec((rows, cols), values)?)
}

fn read_labels(path: &Path) -> Result<Vec<bool>> {
    let npy = read_npy(path)?;
    ensure!(
        npy.descr == "|u1" || npy.descr == "|b1",
        "{}: need |u1 or |b1 labels, got {}",
        path.display(),
        npy.descr
    );
    ensure!(
        npy.shape.iter().product::<usize>() == npy.data.len(),
        "truncated labels"
    );
    Ok(npy.data.iter().map(|&b| b != 0).collect())
}

/// AUC ROC from the library's evaluation (checked against scikit-learn in `src/eval`).
fn auc(scores: &[f32], labels: &[bool]) -> f64 {
    vigil::eval::auc_roc(scores, labels)
        .ok()
        .flatten()
        .unwrap_or(f64::NAN)
}

/// User + system CPU time of this process (all threads), from `/proc/self/stat` on Linux.
/// On a shared, oversubscribed machine this is a steadier figure than wall time.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel's USER_HZ is 100 on every mainstream Linux configuration.
    Some(ticks / 100.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()?;
    let x_train = read_matrix(&args.data.join("X_train.npy"))?;
    let y_train = read_labels(&args.data.join("y_train.npy"))?;
    let x_test = read_matrix(&args.data.join("X_test.npy"))?;
    let y_test = read_labels(&args.data.join("y_test.npy"))?;

    let params = RandomForestParams::new()
        .n_trees(args.trees)
        .max_depth(Some(args.depth))
        .max_features(MaxFeatures::Sqrt)
        .max_bins(args.max_bins)
        .seed(args.seed);
    let params = linfa::ParamGuard::check(params)?;

    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let forest = fit_forest(&params, x_train.view(), &y_train, &|_| {})?;
    let fit_seconds = start.elapsed().as_secs_f64();
    let fit_cpu_seconds = cpu_seconds().zip(cpu_start).map(|(end, start)| end - start);

    let scores: Vec<f32> = x_test
        .rows()
        .into_iter()
        .map(|row| match row.as_slice() {
            Some(slice) => forest.predict(slice),
            None => forest.predict(&row.to_vec()),
        })
        .collect();
    let bytes: Vec<u8> = scores.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(args.data.join("vigil_scores.f32"), bytes)?;
    println!(
        "{{\"fit_seconds\": {fit_seconds:.3}, \"fit_cpu_seconds\": {}, \"test_auc\": {:.5}, \"nodes\": {}, \"threads\": {}}}",
        fit_cpu_seconds.map_or("null".to_string(), |s| format!("{s:.3}")),
        auc(&scores, &y_test),
        forest.n_nodes(),
        args.threads
    );
    Ok(())
}
