//! The plugin binary: on `wasm32-wasip1`, the http-wasm guest ABI around [`appproxy_fastpath`]
//! (`abi.rs`); on the host, nothing (the logic is tested as a library).

#[cfg(target_arch = "wasm32")]
mod abi;

fn main() {
    #[cfg(target_arch = "wasm32")]
    abi::init();
}
