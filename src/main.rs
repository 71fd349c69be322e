//! mipsvisor firmware entry (placeholder until the MIPS boot path lands).
fn main() {}
