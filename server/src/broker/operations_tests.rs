//! Scenario tests of the operator's side of the core (`operations.rs`) and of issue 7's
//! security fixes, one story per test, with a fake clock (plain numbers).
