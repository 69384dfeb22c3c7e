//! Call-stack profiles of runs and their formats: folded stacks, speedscope, pprof, an SVG
//! flame graph, and the JSON the web page draws.
//!
//! A run's profile is its call tree merged by stack: one frame per distinct path of calls from
//! the run down, with the number of calls on that path and their total and self time. It is
//! built when the trace is recorded ([`Stacks::from_calls`]) from **every call in the
//! recorder's log**, not from the calls kept as spans, so `--max-spans` does not shape it:
//!
//! - A call in the log is counted on its exact stack, with its exact duration.
//! - A call not in the log (shorter than the minimum span duration, or dropped when the log
//!   filled up) is not a frame: its time is in its caller's self time, as in the spans. The
//!   per-function totals ([`super::FunctionStats`]) stay exact for every call; the profile says
//!   how many calls it lacks ([`Profile::calls_outside_stacks`]).
//! - A run whose calls were not recorded (unsampled) has only its per-function totals: its
//!   profile is flat, one frame per function under the run with the function's exact self
//!   time (no stacks).
//! - At most [`MAX_STACKS`] distinct stacks holding [`MAX_STACK_FRAMES`] frames in all are
//!   kept per run; calls past them count in their caller's frame.
//!
//! The root frame is the run (named after the module): its total is the run's duration and its
//! self time what the run spent outside any recorded call. Self times of all frames add up to
//! the root's total. A module's profile merges its recent runs' profiles by frame names.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod proto;

use std::collections::HashMap;
use std::io::Write;

use prost::Message;
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::TraceRecord;
use super::tree::Call;

/// Distinct stacks a run's profile keeps.
pub const MAX_STACKS: usize = 20_000;
/// Frames all of a run's distinct stacks hold together (a stack of depth `d` holds `d`).
pub const MAX_STACK_FRAMES: usize = 1 << 20;

/// Stacks a run's profile has room for before it grows.
const INITIAL_STACKS: usize = 4096;

/// The formats a profile is served in, by their `format=` names.
pub const FORMATS: [&str; 5] = ["folded", "speedscope", "pprof", "svg", "stacks"];

/// One run's calls merged by stack, by call id: compact, built once when the trace is recorded.
#[derive(Debug, Clone, Default)]
pub struct Stacks {
    /// Index 0 is the run itself; parents come before their children.
    nodes: Vec<StackNode>,
}

#[derive(Debug, Clone, Copy)]
struct StackNode {
    id: u32,
    parent: u32,
    depth: u32,
    calls: u64,
    total_ns: u64,
    self_ns: u64,
}

impl Stacks {
    /// Merges `calls` (in start order, parents before callees, as [`super::tree::build`] gives
    /// them) by stack, under a root for the run lasting `run_ns`.
    pub fn from_calls(calls: &[Call], run_ns: u64) -> Stacks {
        // Room for as many stacks as calls, up to a first guess for long runs (whose calls
        // mostly repeat stacks).
        let room = (calls.len() + 1).min(INITIAL_STACKS);
        let mut nodes = Vec::with_capacity(room);
        nodes.push(StackNode {
            id: u32::MAX,
            parent: u32::MAX,
            depth: 0,
            calls: 1,
            total_ns: run_ns,
            self_ns: 0,
        });
        // Self time: a call's duration, less its logged callees' (which lie within it).
        let mut self_ns: Vec<i64> = Vec::with_capacity(room);
        self_ns.push(run_ns as i64);
        // Keys are small integers: a fast hash, not a DoS-resistant one.
        let mut index: FxHashMap<(u32, u32), u32> =
            FxHashMap::with_capacity_and_hasher(room, Default::default());
        let mut node_of: Vec<u32> = Vec::with_capacity(calls.len());
        let mut frames = 0usize;
        for call in calls {
            let parent = call.parent.map_or(0, |p| node_of[p as usize]);
            let depth = nodes[parent as usize].depth + 1;
            let node = match index.get(&(parent, call.id)) {
                Some(&node) => node,
                None if nodes.len() < MAX_STACKS && frames + depth as usize <= MAX_STACK_FRAMES => {
                    frames += depth as usize;
                    let node = nodes.len() as u32;
                    nodes.push(StackNode {
                        id: call.id,
                        parent,
                        depth,
                        calls: 0,
                        total_ns: 0,
                        self_ns: 0,
                    });
                    self_ns.push(0);
                    index.insert((parent, call.id), node);
                    node
                }
                // Out of room: the call counts in its caller's frame (its time is there already).
                None => parent,
            };
            node_of.push(node);
            if node != parent {
                let duration = call.duration();
                let n = &mut nodes[node as usize];
                n.calls += 1;
                n.total_ns += duration;
                self_ns[node as usize] += duration as i64;
                self_ns[parent as usize] -= duration as i64;
            }
        }
        for (node, s) in nodes.iter_mut().zip(self_ns) {
            node.self_ns = s.max(0) as u64;
        }
        // Kept with the trace: not much more room than it uses.
        if nodes.capacity() > 2 * nodes.len() {
            nodes.shrink_to_fit();
        }
        Stacks { nodes }
    }

    /// Whether no call is in it (only the run).
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Distinct stacks (the run's own included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Bytes it holds.
    pub fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<StackNode>()
    }
}

/// One frame of a [`Profile`]: a distinct stack, named by its innermost call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The function (or host call, or manual span) at the top of this stack.
    pub name: String,
    /// Index of the calling frame; none for the root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    /// Calls on this stack.
    pub calls: u64,
    /// Time in those calls, callees included, in nanoseconds.
    pub total_ns: u64,
    /// Time in those calls, callees excluded, in nanoseconds.
    pub self_ns: u64,
}

/// A call-stack profile: frames in an order where parents come before their children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// What it profiles (`fib`, `fib: 12 runs`).
    pub title: String,
    /// Runs merged into it.
    pub runs: u64,
    /// Whether the frames are stacks; `false` for a flat profile from per-function totals.
    pub stacks: bool,
    /// Calls counted in the per-function totals but not on any frame (shorter than the minimum
    /// span duration, or out of the log): their time is in their callers' self time.
    pub calls_outside_stacks: u64,
    /// Calls of short functions the module counted rather than timed: on no frame, their time
    /// is in their callers' self time.
    pub calls_counted: u64,
    /// Start of the (first) run, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// The frames; `frames[0]` is the root.
    pub frames: Vec<Frame>,
}

impl Profile {
    /// The profile of one recorded run.
    pub fn of_trace(trace: &TraceRecord) -> Profile {
        let names = trace.names();
        let stacks = trace.stacks();
        let run_ns = trace.run_duration_ns();
        let (mut total_calls, mut calls_counted) = (0u64, 0u64);
        for (id, totals) in trace.function_totals() {
            if trace.is_counted(id) {
                calls_counted += totals.calls;
            } else {
                total_calls += totals.calls;
            }
        }
        let start_unix_nanos = super::unix_nanos(trace.start()) as u64;
        if stacks.is_empty() && total_calls > 0 {
            // Unsampled: only the exact totals, one flat frame per function.
            let mut frames = vec![Frame {
                name: trace.module.clone(),
                parent: None,
                calls: 1,
                total_ns: run_ns,
                self_ns: 0,
            }];
            let mut inside = 0u64;
            for f in trace.functions().into_iter().filter(|f| f.timed) {
                inside += f.self_ns;
                frames.push(Frame {
                    name: f.name,
                    parent: Some(0),
                    calls: f.calls,
                    total_ns: f.self_ns,
                    self_ns: f.self_ns,
                });
            }
            frames[0].self_ns = run_ns.saturating_sub(inside);
            frames[0].total_ns = run_ns.max(inside);
            return Profile {
                title: trace.module.clone(),
                runs: 1,
                stacks: false,
                calls_outside_stacks: 0,
                calls_counted,
                start_unix_nanos,
                frames,
            };
        }
        let frames: Vec<Frame> = stacks
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Frame {
                name: if i == 0 {
                    trace.module.clone()
                } else {
                    names.name(n.id)
                },
                parent: (i > 0).then_some(n.parent),
                calls: n.calls,
                total_ns: n.total_ns,
                self_ns: n.self_ns,
            })
            .collect();
        let on_frames: u64 = frames[1..].iter().map(|f| f.calls).sum();
        Profile {
            title: trace.module.clone(),
            runs: 1,
            stacks: true,
            calls_outside_stacks: total_calls.saturating_sub(on_frames),
            calls_counted,
            start_unix_nanos,
            frames,
        }
    }

    /// Merges `profiles` frame by frame (same names on the same path), under a root named
    /// `title` whose calls are the runs.
    pub fn merge(title: &str, profiles: &[Profile]) -> Profile {
        let mut frames = vec![Frame {
            name: title.to_string(),
            parent: None,
            calls: 0,
            total_ns: 0,
            self_ns: 0,
        }];
        let mut index: HashMap<(u32, String), u32> = HashMap::new();
        let mut merged = Profile {
            title: String::new(),
            runs: 0,
            stacks: true,
            calls_outside_stacks: 0,
            calls_counted: 0,
            start_unix_nanos: profiles
                .iter()
                .map(|p| p.start_unix_nanos)
                .min()
                .unwrap_or(0),
            frames: Vec::new(),
        };
        for profile in profiles {
            merged.runs += profile.runs;
            merged.stacks &= profile.stacks;
            merged.calls_outside_stacks += profile.calls_outside_stacks;
            merged.calls_counted += profile.calls_counted;
            let mut new_index = Vec::with_capacity(profile.frames.len());
            for frame in &profile.frames {
                let target = match frame.parent {
                    None => 0,
                    Some(p) => {
                        let parent = new_index[p as usize];
                        *index
                            .entry((parent, frame.name.clone()))
                            .or_insert_with(|| {
                                frames.push(Frame {
                                    name: frame.name.clone(),
                                    parent: Some(parent),
                                    calls: 0,
                                    total_ns: 0,
                                    self_ns: 0,
                                });
                                frames.len() as u32 - 1
                            })
                    }
                };
                new_index.push(target);
                let f = &mut frames[target as usize];
                f.calls += frame.calls;
                f.total_ns += frame.total_ns;
                f.self_ns += frame.self_ns;
            }
        }
        merged.title = format!(
            "{title}: {} run{}",
            merged.runs,
            if merged.runs == 1 { "" } else { "s" }
        );
        merged.frames = frames;
        merged
    }

    /// The names on the path from the root to `frame`.
    fn path(&self, frame: usize) -> Vec<&str> {
        let mut path = Vec::new();
        let mut at = Some(frame as u32);
        while let Some(i) = at {
            let f = &self.frames[i as usize];
            path.push(f.name.as_str());
            at = f.parent;
        }
        path.reverse();
        path
    }

    /// Brendan Gregg's folded stacks: one line per stack with self time,
    /// `root;caller;callee NANOSECONDS`. A name's `;` becomes `:` and line breaks spaces.
    pub fn folded(&self) -> String {
        let mut out = String::new();
        for (i, frame) in self.frames.iter().enumerate() {
            if frame.self_ns == 0 {
                continue;
            }
            let path: Vec<String> = self.path(i).into_iter().map(folded_name).collect();
            out.push_str(&path.join(";"));
            out.push(' ');
            out.push_str(&frame.self_ns.to_string());
            out.push('\n');
        }
        out
    }

    /// An SVG flame graph of the folded stacks (inferno), widths in nanoseconds.
    ///
    /// # Errors
    ///
    /// When inferno fails (it does not on well-formed folded stacks).
    pub fn svg(&self) -> std::io::Result<Vec<u8>> {
        let folded = self.folded();
        let mut options = inferno::flamegraph::Options::default();
        options.title = format!("iota: {}", self.title);
        options.count_name = "ns".into();
        options.name_type = "Function:".into();
        options.deterministic = true;
        if !self.stacks {
            options.subtitle = Some("flat: per-function self time, no stacks recorded".into());
        }
        let mut svg = Vec::new();
        if folded.is_empty() {
            // inferno refuses an empty profile; say so in a picture.
            options.subtitle = Some("no time recorded".into());
            inferno::flamegraph::from_lines(
                &mut options,
                [format!("{} 1", self.title).as_str()],
                &mut svg,
            )?;
        } else {
            inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)?;
        }
        Ok(svg)
    }

    /// A speedscope file (<https://www.speedscope.app/file-format-schema.json>) holding one
    /// sampled profile: a sample per stack, weighted by its self time in nanoseconds.
    pub fn speedscope(&self) -> serde_json::Value {
        let mut frame_of: HashMap<&str, usize> = HashMap::new();
        let mut shared = Vec::new();
        // Stacks of frame indices into `shared`, built from each frame's parent's.
        let mut stacks: Vec<Vec<usize>> = Vec::with_capacity(self.frames.len());
        let mut samples = Vec::new();
        let mut weights = Vec::new();
        for frame in &self.frames {
            let mut stack = frame
                .parent
                .map_or_else(Vec::new, |p| stacks[p as usize].clone());
            let index = *frame_of.entry(frame.name.as_str()).or_insert_with(|| {
                shared.push(serde_json::json!({ "name": frame.name }));
                shared.len() - 1
            });
            stack.push(index);
            if frame.self_ns > 0 {
                samples.push(stack.clone());
                weights.push(frame.self_ns);
            }
            stacks.push(stack);
        }
        let total: u64 = weights.iter().sum();
        serde_json::json!({
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "name": self.title,
            "exporter": concat!("iota ", env!("CARGO_PKG_VERSION")),
            "activeProfileIndex": 0,
            "shared": { "frames": shared },
            "profiles": [{
                "type": "sampled",
                "name": self.title,
                "unit": "nanoseconds",
                "startValue": 0,
                "endValue": total,
                "samples": samples,
                "weights": weights,
            }],
        })
    }

    /// A gzipped pprof `profile.proto`: one sample per stack with two values, `calls/count`
    /// (calls on that stack) and `wall/nanoseconds` (its self time, the default), so pprof's
    /// flat is self time and its cum total time.
    pub fn pprof(&self) -> Vec<u8> {
        let mut strings: Vec<String> = vec![String::new()];
        let mut string_ids: HashMap<String, i64> = HashMap::new();
        let mut string = |s: &str| -> i64 {
            if let Some(&id) = string_ids.get(s) {
                return id;
            }
            strings.push(s.to_string());
            string_ids.insert(s.to_string(), strings.len() as i64 - 1);
            strings.len() as i64 - 1
        };
        let value_type = |ty: i64, unit: i64| proto::ValueType { ty, unit };
        let sample_type = vec![
            value_type(string("calls"), string("count")),
            value_type(string("wall"), string("nanoseconds")),
        ];
        let filename = string(&self.title);
        // One function and one location per distinct name; ids start at 1.
        let mut location_of: HashMap<&str, u64> = HashMap::new();
        let mut functions = Vec::new();
        let mut locations = Vec::new();
        let mut location_ids: Vec<u64> = Vec::with_capacity(self.frames.len());
        for frame in &self.frames {
            let id = *location_of.entry(frame.name.as_str()).or_insert_with(|| {
                let id = functions.len() as u64 + 1;
                let name = string(&frame.name);
                functions.push(proto::Function {
                    id,
                    name,
                    system_name: name,
                    filename,
                    start_line: 0,
                });
                locations.push(proto::Location {
                    id,
                    mapping_id: 0,
                    address: 0,
                    line: vec![proto::Line {
                        function_id: id,
                        line: 0,
                    }],
                    is_folded: false,
                });
                id
            });
            location_ids.push(id);
        }
        let mut samples = Vec::new();
        for (i, frame) in self.frames.iter().enumerate() {
            if frame.self_ns == 0 && frame.calls == 0 {
                continue;
            }
            // Leaf first.
            let mut location_id = Vec::new();
            let mut at = Some(i as u32);
            while let Some(j) = at {
                location_id.push(location_ids[j as usize]);
                at = self.frames[j as usize].parent;
            }
            samples.push(proto::Sample {
                location_id,
                value: vec![frame.calls as i64, frame.self_ns as i64],
                label: Vec::new(),
            });
        }
        let wall = string("wall");
        let nanoseconds = string("nanoseconds");
        let comment = if self.stacks {
            Vec::new()
        } else {
            vec![string("flat: per-function self time, no stacks recorded")]
        };
        let profile = proto::Profile {
            sample_type,
            sample: samples,
            mapping: Vec::new(),
            location: locations,
            function: functions,
            string_table: strings,
            drop_frames: 0,
            keep_frames: 0,
            time_nanos: self.start_unix_nanos as i64,
            duration_nanos: self.frames[0].total_ns as i64,
            period_type: Some(value_type(wall, nanoseconds)),
            period: 1,
            comment,
            default_sample_type: wall,
        };
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a vector does not fail.
        let _ = gzip.write_all(&profile.encode_to_vec());
        gzip.finish().unwrap_or_default()
    }
}

/// A name as a folded-stack frame: no `;` (the separator) and no line breaks.
fn folded_name(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u32, parent: Option<u32>, start: u64, end: u64) -> Call {
        Call {
            id,
            parent,
            start,
            end,
            unfinished: false,
        }
    }

    /// main(0..100) calls f(10..30) and f(40..50); the first f calls g(15..20).
    fn sample_calls() -> Vec<Call> {
        vec![
            call(0, None, 0, 100),
            call(1, Some(0), 10, 30),
            call(2, Some(1), 15, 20),
            call(1, Some(0), 40, 50),
        ]
    }

    fn profile(stacks: &Stacks, names: &[&str]) -> Profile {
        Profile {
            title: "m".into(),
            runs: 1,
            stacks: true,
            calls_outside_stacks: 0,
            calls_counted: 0,
            start_unix_nanos: 0,
            frames: stacks
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| Frame {
                    name: if i == 0 {
                        "m".into()
                    } else {
                        names[n.id as usize].into()
                    },
                    parent: (i > 0).then_some(n.parent),
                    calls: n.calls,
                    total_ns: n.total_ns,
                    self_ns: n.self_ns,
                })
                .collect(),
        }
    }

    #[test]
    fn stacks_merge_calls_with_exact_self_time() {
        let stacks = Stacks::from_calls(&sample_calls(), 120);
        let p = profile(&stacks, &["main", "f", "g"]);
        let shape: Vec<_> = p
            .frames
            .iter()
            .map(|f| (f.name.as_str(), f.parent, f.calls, f.total_ns, f.self_ns))
            .collect();
        assert_eq!(
            shape,
            [
                ("m", None, 1, 120, 20),
                ("main", Some(0), 1, 100, 70),
                ("f", Some(1), 2, 30, 25),
                ("g", Some(2), 1, 5, 5),
            ]
        );
        assert_eq!(p.folded(), "m 20\nm;main 70\nm;main;f 25\nm;main;f;g 5\n");
        let self_sum: u64 = p.frames.iter().map(|f| f.self_ns).sum();
        assert_eq!(self_sum, p.frames[0].total_ns);
    }

    #[test]
    fn merge_adds_matching_paths() {
        let stacks = Stacks::from_calls(&sample_calls(), 100);
        let p = profile(&stacks, &["main", "f", "g"]);
        let merged = Profile::merge("m", &[p.clone(), p]);
        assert_eq!(merged.runs, 2);
        assert_eq!(merged.title, "m: 2 runs");
        assert_eq!(merged.frames.len(), 4);
        assert_eq!(merged.frames[2].calls, 4);
        assert_eq!(merged.frames[2].total_ns, 60);
        assert_eq!(merged.frames[0].total_ns, 200);
    }

    #[test]
    fn formats_carry_the_same_totals() {
        let stacks = Stacks::from_calls(&sample_calls(), 100);
        let p = profile(&stacks, &["ma;in", "f", "g"]);
        assert!(p.folded().contains("m;ma:in;f;g 5\n"));
        let speedscope = p.speedscope();
        let weights: u64 = speedscope["profiles"][0]["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_u64().unwrap())
            .sum();
        assert_eq!(weights, 100);
        let svg = String::from_utf8(p.svg().unwrap()).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..100]);
        let gz = p.pprof();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut bytes).unwrap();
        let decoded = proto::Profile::decode(&bytes[..]).unwrap();
        let wall: i64 = decoded.sample.iter().map(|s| s.value[1]).sum();
        assert_eq!(wall, 100);
    }

    /// Time to merge a full log (524,288 calls of a recursion 20 deep, as fib makes) by stack:
    /// `cargo test --release --lib stacks_of_a_full_log -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement"]
    fn stacks_of_a_full_log() {
        let mut calls = Vec::new();
        fn fib(calls: &mut Vec<Call>, parent: Option<u32>, n: u32, at: &mut u64, budget: usize) {
            if calls.len() >= budget {
                return;
            }
            let index = calls.len();
            calls.push(call(1, parent, *at, 0));
            *at += 1;
            if n > 1 {
                fib(calls, Some(index as u32), n - 1, at, budget);
                fib(calls, Some(index as u32), n - 2, at, budget);
            }
            *at += 1;
            calls[index].end = *at;
        }
        let mut at = 0;
        fib(&mut calls, None, 40, &mut at, 1 << 19);
        let started = std::time::Instant::now();
        let stacks = Stacks::from_calls(&calls, at);
        let elapsed = started.elapsed();
        eprintln!(
            "{} calls merged into {} stacks in {:.1} ms",
            calls.len(),
            stacks.len(),
            elapsed.as_secs_f64() * 1e3
        );
    }

    #[test]
    fn stacks_past_the_limit_count_in_their_caller() {
        // A chain deeper than the frame budget allows.
        let depth = 2000u32;
        let calls: Vec<Call> = (0..depth)
            .map(|i| call(i, i.checked_sub(1), u64::from(i), 10_000 - u64::from(i)))
            .collect();
        let stacks = Stacks::from_calls(&calls, 10_000);
        let kept_frames: usize = stacks.nodes.iter().map(|n| n.depth as usize).sum();
        assert!(kept_frames <= MAX_STACK_FRAMES);
        let self_sum: u64 = stacks.nodes.iter().map(|n| n.self_ns).sum();
        assert_eq!(self_sum, 10_000);
    }
}
