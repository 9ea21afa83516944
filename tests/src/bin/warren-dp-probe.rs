//! The TCP/UDP servers and clients of the data-plane tests; see
//! `warren_tests::dataplane::probe`.

fn main() {
    warren_tests::dataplane::probe::main();
}
