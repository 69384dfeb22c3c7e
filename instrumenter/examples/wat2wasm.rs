//! Assembles a WebAssembly text file into a binary: `wat2wasm IN.wat OUT.wasm`.

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: wat2wasm IN.wat OUT.wasm");
    };
    let wasm = wat::parse_file(input).with_context(|| format!("assembling {input}"))?;
    std::fs::write(output, wasm).with_context(|| format!("writing {output}"))?;
    Ok(())
}
