//! Inputs for real third-party programs, shared by the tests that run them.

/// An SMT-LIB problem for boolector (sat, with a model).
pub const SMT: &str = "(set-logic QF_BV)
(declare-fun x () (_ BitVec 8))
(declare-fun y () (_ BitVec 8))
(assert (= (bvmul x y) #x3f))
(assert (bvugt x #x01))
(assert (bvugt y x))
(check-sat)
(get-model)
";

/// An SVG for usvg and resvg.
pub const SVG: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">
<rect x="4" y="4" width="40" height="30" fill="teal" transform="rotate(10)"/>
<circle cx="40" cy="40" r="16" fill="none" stroke="black"/></svg>"#;

/// A micropython script that raises and catches an exception 25 frames deep.
pub const MICROPYTHON: &str = "def dive(n):
    if n == 0:
        raise ValueError('bottom')
    return dive(n - 1)
try:
    dive(25)
except ValueError as e:
    print('caught', e)
print(sum(i * i for i in range(1000)))
";
