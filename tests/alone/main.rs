//! Tests that measure how the work is split between workers. A split is a
//! matter of which process the scheduler runs first, so these run in a
//! binary of their own: cargo runs test binaries one after another, and no
//! other test of the suite shares the CPUs with them while they count.
//! (Alone they pass with both cores kept busy by other jobs; beside the
//! suite's other masters starting and stopping, a burst could land on two
//! workers while the other two waited for a CPU.)

// The support module is shared with the integration tests; this binary uses
// only part of it (and of what it re-exports).
#[allow(unused_imports)]
#[path = "../integration/support/mod.rs"]
mod support;

mod balance;
