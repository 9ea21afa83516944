fn main() {
    println!("warren {}", warren::VERSION);
}
