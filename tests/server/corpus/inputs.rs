//! What each WASI command of the corpus is run with: its arguments and stdin, chosen so the
//! output is deterministic and exercises the program (solving, compiling, rendering, parsing)
//! where it can work from stdin alone, or prints its version or usage where it needs files.

use crate::programs::{MICROPYTHON, SMT, SVG};

/// The inputs of one command, found by the module's file name.
pub struct Inputs {
    /// The module's file name in the corpus directory.
    pub file: &'static str,
    /// argv, the program name first (also the name the module is uploaded under).
    pub argv: &'static [&'static str],
    pub stdin: &'static str,
    /// Extra upload options (`&unknown_imports=trap` for imports neither WASI nor hooks).
    pub upload: &'static str,
}

const C_SOURCE: &str = "struct point { int x, y; };
static int dot(struct point a, struct point b) { return a.x * b.x + a.y * b.y; }
int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
int sum(const struct point *p, int n) {
    int s = 0;
    for (int i = 0; i < n; i++)
        s += dot(p[i], p[(i + 1) % n]);
    return s + fib(10);
}
";

const PYTHON: &str = "import json
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
print(json.dumps({'fib': [fib(i) for i in range(15)], 'squares': sum(i * i for i in range(10**4))}))
";

const YOSYS_SCRIPT: &str = "read_verilog <<EOT
module mac(input clk, input [7:0] a, b, output reg [15:0] acc);
  always @(posedge clk) acc <= acc + a * b;
endmodule
EOT
proc
opt
wreduce
alumacc
opt
stat
";

/// Every WASI command of the default corpus. A command not listed here runs with no
/// arguments and empty stdin.
pub const INPUTS: &[Inputs] = &[
    Inputs {
        file: "boolector.wasm",
        argv: &["boolector", "--smt2", "-m"],
        stdin: SMT,
        upload: "",
    },
    Inputs {
        file: "silice.wasm",
        argv: &["silice", "--version"],
        stdin: "",
        upload: "",
    },
    Inputs {
        file: "nextpnr-gowin.wasm",
        argv: &["nextpnr-gowin", "--version"],
        stdin: "",
        upload: "",
    },
    Inputs {
        file: "usvg.wasm",
        argv: &["usvg", "-", "-c"],
        stdin: SVG,
        upload: "",
    },
    Inputs {
        file: "resvg.wasm",
        argv: &["resvg", "-", "-c"],
        stdin: SVG,
        upload: "",
    },
    Inputs {
        file: "micropython-wasi.wasm",
        argv: &["micropython"],
        stdin: MICROPYTHON,
        upload: "&unknown_imports=trap",
    },
    // The wheel drives graphviz through exported functions; its `_start` does nothing.
    Inputs {
        file: "graphviz.wasm",
        argv: &["graphviz"],
        stdin: "",
        upload: "",
    },
    Inputs {
        file: "avr-as.wasm",
        argv: &["avr-as", "--version"],
        stdin: "",
        upload: "",
    },
    Inputs {
        file: "avr-ld.wasm",
        argv: &["avr-ld", "--help"],
        stdin: "",
        upload: "",
    },
    Inputs {
        file: "avr-objcopy.wasm",
        argv: &["avr-objcopy", "--help"],
        stdin: "",
        upload: "",
    },
    // GCC's compiler proper: C on stdin, AVR assembly on stdout.
    Inputs {
        file: "cc1.wasm",
        argv: &["cc1", "-quiet", "-O2", "-o", "-"],
        stdin: C_SOURCE,
        upload: "",
    },
    Inputs {
        file: "python-3.12.0.wasm",
        argv: &["python", "-c", PYTHON],
        stdin: "",
        upload: "",
    },
    Inputs {
        file: "flite.wasm",
        argv: &[
            "flite",
            "-ps",
            "-t",
            "the quick brown fox jumps over the lazy dog",
            "-o",
            "none",
        ],
        stdin: "",
        upload: "",
    },
    // With `scripts/corpus.sh --large`:
    // A script on stdin, the Verilog inline: parse, elaborate, optimize, extract the arithmetic, count.
    Inputs {
        file: "yosys.wasm",
        argv: &["yosys", "-Q", "-T", "-s", "-"],
        stdin: YOSYS_SCRIPT,
        upload: "",
    },
    Inputs {
        file: "cc1plus.wasm",
        argv: &["cc1plus", "-quiet", "-O2", "-o", "-"],
        stdin: "template <int N> struct f { enum { v = N * f<N - 1>::v }; };
template <> struct f<0> { enum { v = 1 }; };
int g() { return f<6>::v; }
",
        upload: "",
    },
];

/// The inputs listed for `file`, if any.
pub fn lookup(file: &str) -> Option<&'static Inputs> {
    INPUTS.iter().find(|inputs| inputs.file == file)
}
