//! Where each of the redaction fast tier's detectors can first match in a text.
//!
//! The sidecar's detectors are Python regular expressions with lookbehinds and back
//! references, confirmed by Python checks; they stay the reference. This module gets two
//! lookaround-free over-approximations of each detector's pattern (`redaction/anchors.py`
//! writes them: one for any text, one for ASCII texts, whose classes hold ASCII only, so
//! the crate builds small byte automata) and tells, for a text, where each first matches.
//! A detector whose approximation matches nowhere can't match, and none of its matches
//! starts earlier than the approximation's first match, so the engine skips it or starts
//! its search there.
//!
//! Each approximation is searched on its own: a `RegexSet` of all of them (one pass)
//! measured several times slower on prompts of a few hundred characters, its automaton
//! being too large for the lazy DFA's cache.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use regex::{Regex, RegexBuilder};

// Counted repetitions and Unicode classes make large automata; the crate's defaults are
// sized for small patterns.
const SIZE_LIMIT: usize = 64 << 20;
const DFA_SIZE_LIMIT: usize = 16 << 20;

/// Where each detector's approximation first matches in a text.
#[pyclass(frozen, module = "clawdbot_fastscan")]
struct Scanner {
    // Per detector, in the order given: its approximations (None: search from the start).
    unicode: Vec<Option<Regex>>,
    ascii: Vec<Option<Regex>>,
    // Detectors whose approximation the crate refused (too large, say): they are searched
    // from the start of every text, which costs time, never findings.
    refused: Vec<usize>,
}

fn compile_all(
    patterns: &[Option<String>],
    unicode: bool,
    refused: &mut Vec<usize>,
) -> Vec<Option<Regex>> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, pattern)| {
            let source = pattern.as_deref()?;
            let built = RegexBuilder::new(source)
                .unicode(unicode)
                .size_limit(SIZE_LIMIT)
                .dfa_size_limit(DFA_SIZE_LIMIT)
                .build();
            if built.is_err() && !refused.contains(&i) {
                refused.push(i);
            }
            built.ok()
        })
        .collect()
}

#[pymethods]
impl Scanner {
    /// `unicode` and `ascii`: one approximation (or None) per detector, in the same order.
    #[new]
    fn new(unicode: Vec<Option<String>>, ascii: Vec<Option<String>>) -> PyResult<Self> {
        if unicode.len() != ascii.len() {
            return Err(PyValueError::new_err(
                "expected one Unicode and one ASCII pattern per detector",
            ));
        }
        let mut refused = Vec::new();
        let unicode = compile_all(&unicode, true, &mut refused);
        let ascii = compile_all(&ascii, false, &mut refused);
        refused.sort_unstable();
        Ok(Scanner {
            unicode,
            ascii,
            refused,
        })
    }

    /// The detectors (indices) whose approximation the crate could not compile.
    fn refused(&self) -> Vec<usize> {
        self.refused.clone()
    }

    /// For each detector, the character offset in `text` where its approximation first
    /// matches, -1 where it matches nowhere, 0 for a detector without one.
    fn first_starts(&self, text: &str) -> Vec<i64> {
        if text.is_ascii() {
            return self
                .ascii
                .iter()
                .map(|regex| match regex {
                    None => 0,
                    Some(r) => r.find(text).map_or(-1, |m| m.start() as i64),
                })
                .collect();
        }
        self.unicode
            .iter()
            .map(|regex| match regex {
                None => 0,
                Some(r) => r
                    .find(text)
                    .map_or(-1, |m| text[..m.start()].chars().count() as i64),
            })
            .collect()
    }

    /// How many detectors this scanner was built for.
    fn __len__(&self) -> usize {
        self.ascii.len()
    }
}

#[pymodule]
fn clawdbot_fastscan(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Scanner>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
