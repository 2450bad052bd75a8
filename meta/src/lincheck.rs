//! A linearizability checker (Wing & Gong's search with Lowe's memoization,
//! as in Porcupine) for histories recorded against the meta API by tests.
//!
//! A history is a list of operations with the time each was called and the
//! time it returned. An operation whose outcome is unknown (timeout, broken
//! connection) has no return time: it may take effect at any point after its
//! call, or never. The checker searches for a total order that respects
//! real time (an operation that returned before another was called comes
//! first) and in which each operation's result is what the sequential model
//! gives; histories of independent keys are checked separately.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    /// The state of one key.
    type State: Clone + Eq + Hash;
    /// An operation's input.
    type Input;
    /// An operation's result.
    type Output;
    /// The state before any operation.
    fn init() -> Self::State;
    /// The state after `input`, if `output` is what it returns from
    /// `state`; with `output == None` (outcome unknown) any result is
    /// acceptable.
    fn step(
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    /// Key it acts on.
    pub key: String,
    /// When it was called.
    pub call: u64,
    /// When it returned, with its result (None: outcome unknown).
    pub returned: Option<(u64, O)>,
    /// What it was asked.
    pub input: I,
}

/// A key-value register with create-if-absent, delete-if-present and get,
/// the semantics of the meta API's create, delete and get of one object.
pub struct CreateDeleteGet;

/// Input of [`CreateDeleteGet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdgInput {
    /// Create with this value.
    Create(String),
    /// Delete.
    Delete,
    /// Read.
    Get,
}

/// Output of [`CreateDeleteGet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdgOutput {
    /// Create or delete succeeded.
    Ok,
    /// Create found the key present.
    AlreadyExists,
    /// Delete or get found the key absent.
    NotFound,
    /// Get found this value.
    Value(String),
}

impl Model for CreateDeleteGet {
    type State = Option<String>;
    type Input = CdgInput;
    type Output = CdgOutput;

    fn init() -> Self::State {
        None
    }

    fn step(
        state: &Option<String>,
        input: &CdgInput,
        output: Option<&CdgOutput>,
    ) -> Option<Option<String>> {
        let (result, next) = match (input, state) {
            (CdgInput::Create(v), None) => (CdgOutput::Ok, Some(v.clone())),
            (CdgInput::Create(_), Some(_)) => (CdgOutput::AlreadyExists, state.clone()),
            (CdgInput::Delete, Some(_)) => (CdgOutput::Ok, None),
            (CdgInput::Delete, None) => (CdgOutput::NotFound, None),
            (CdgInput::Get, Some(v)) => (CdgOutput::Value(v.clone()), state.clone()),
            (CdgInput::Get, None) => (CdgOutput::NotFound, None),
        };
        match output {
            Some(o) if *o != result => None,
            _ => Some(next),
        }
    }
}

/// An operation of model `M`.
pub type ModelOp<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

/// Checks a history; returns the first key whose operations cannot be
/// linearized.
pub fn check<M: Model>(history: &[ModelOp<M>]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&ModelOp<M>>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_key::<M>(&ops) {
            return Err(key.to_string());
        }
    }
    Ok(())
}

/// One call or return in the doubly linked event list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// Index of the matching return (for a call).
    partner: usize,
    prev: usize,
    next: usize,
}

/// Sentinel index of the list head.
const HEAD: usize = 0;
/// "No event".
const NONE: usize = usize::MAX;

fn check_key<M: Model>(ops: &[&ModelOp<M>]) -> bool {
    // Calls and returns in time order; at equal times calls come first
    // (such operations are concurrent). Unknown outcomes return at the end.
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, false, i));
        let ret = op.returned.as_ref().map_or(u64::MAX, |(t, _)| *t);
        order.push((ret, true, i));
    }
    order.sort();
    let mut events = vec![Event {
        op: NONE,
        is_call: false,
        partner: NONE,
        prev: NONE,
        next: NONE,
    }];
    let mut return_of = vec![NONE; ops.len()];
    let mut call_of = vec![NONE; ops.len()];
    for (_, is_return, op) in &order {
        let index = events.len();
        events.push(Event {
            op: *op,
            is_call: !is_return,
            partner: NONE,
            prev: index - 1,
            next: NONE,
        });
        events[index - 1].next = index;
        if *is_return {
            return_of[*op] = index;
        } else {
            call_of[*op] = index;
        }
    }
    for op in 0..ops.len() {
        events[call_of[op]].partner = return_of[op];
    }

    let unlink = |events: &mut Vec<Event>, i: usize| {
        let (p, n) = (events[i].prev, events[i].next);
        events[p].next = n;
        if n != NONE {
            events[n].prev = p;
        }
    };
    let relink = |events: &mut Vec<Event>, i: usize| {
        let (p, n) = (events[i].prev, events[i].next);
        events[p].next = i;
        if n != NONE {
            events[n].prev = i;
        }
    };

    let mut state = M::init();
    let mut linearized = vec![false; ops.len()];
    let mut seen: HashSet<(Vec<bool>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut cursor = events[HEAD].next;
    loop {
        if events[HEAD].next == NONE {
            return true;
        }
        if cursor != NONE && events[cursor].is_call {
            let op = ops[events[cursor].op];
            let output = op.returned.as_ref().map(|(_, o)| o);
            if let Some(next) = M::step(&state, &op.input, output) {
                linearized[events[cursor].op] = true;
                if seen.insert((linearized.clone(), next.clone())) {
                    stack.push((cursor, state));
                    state = next;
                    let partner = events[cursor].partner;
                    unlink(&mut events, partner);
                    unlink(&mut events, cursor);
                    cursor = events[HEAD].next;
                    continue;
                }
                linearized[events[cursor].op] = false;
            }
            cursor = events[cursor].next;
        } else {
            // A return of an operation not yet linearized: undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                return false;
            };
            state = previous;
            linearized[events[call].op] = false;
            let partner = events[call].partner;
            relink(&mut events, call);
            relink(&mut events, partner);
            cursor = events[call].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = Operation<CdgInput, CdgOutput>;

    fn op(call: u64, ret: Option<u64>, input: CdgInput, output: CdgOutput) -> Op {
        Operation {
            key: "k".into(),
            call,
            returned: ret.map(|t| (t, output)),
            input,
        }
    }

    fn create(v: &str) -> CdgInput {
        CdgInput::Create(v.into())
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(0, Some(1), CdgInput::Get, CdgOutput::NotFound),
            op(2, Some(3), create("a"), CdgOutput::Ok),
            op(4, Some(5), create("b"), CdgOutput::AlreadyExists),
            op(6, Some(7), CdgInput::Get, CdgOutput::Value("a".into())),
            op(8, Some(9), CdgInput::Delete, CdgOutput::Ok),
            op(10, Some(11), CdgInput::Get, CdgOutput::NotFound),
        ];
        assert_eq!(check::<CreateDeleteGet>(&h), Ok(()));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two overlapping creates: b wins although a was called first.
        let h = vec![
            op(0, Some(10), create("a"), CdgOutput::AlreadyExists),
            op(1, Some(9), create("b"), CdgOutput::Ok),
            op(11, Some(12), CdgInput::Get, CdgOutput::Value("b".into())),
        ];
        assert_eq!(check::<CreateDeleteGet>(&h), Ok(()));
    }

    #[test]
    fn stale_read_is_rejected() {
        // The delete returned before the get was called; the get still sees a.
        let h = vec![
            op(0, Some(1), create("a"), CdgOutput::Ok),
            op(2, Some(3), CdgInput::Delete, CdgOutput::Ok),
            op(4, Some(5), CdgInput::Get, CdgOutput::Value("a".into())),
        ];
        assert_eq!(check::<CreateDeleteGet>(&h), Err("k".into()));
    }

    #[test]
    fn lost_acknowledged_write_is_rejected_but_unknown_outcomes_may_apply() {
        let lost = vec![
            op(0, Some(1), create("a"), CdgOutput::Ok),
            op(2, Some(3), CdgInput::Get, CdgOutput::NotFound),
        ];
        assert!(check::<CreateDeleteGet>(&lost).is_err());
        // An unknown create may take effect late...
        let late = vec![
            op(0, None, create("a"), CdgOutput::Ok),
            op(2, Some(3), CdgInput::Get, CdgOutput::NotFound),
            op(4, Some(5), CdgInput::Get, CdgOutput::Value("a".into())),
        ];
        assert_eq!(check::<CreateDeleteGet>(&late), Ok(()));
        // ...but not before it was called.
        let early = vec![
            op(0, Some(1), CdgInput::Get, CdgOutput::Value("a".into())),
            op(2, None, create("a"), CdgOutput::Ok),
        ];
        assert!(check::<CreateDeleteGet>(&early).is_err());
    }

    #[test]
    fn keys_are_checked_separately() {
        let mut h = vec![op(0, Some(1), create("a"), CdgOutput::Ok)];
        let mut other = op(2, Some(3), CdgInput::Get, CdgOutput::Value("z".into()));
        other.key = "other".into();
        h.push(other);
        assert_eq!(check::<CreateDeleteGet>(&h), Err("other".into()));
    }
}
