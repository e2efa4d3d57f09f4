//! Lets the network binary find libtorch without LD_LIBRARY_PATH and keeps its CUDA part
//! linked. The `tripmine` binary uses no libtorch symbol, so the linker (--as-needed) leaves
//! libtorch out of it: the CUDA part is forced into the targets that run the network only.

use std::path::Path;

fn main() {
    // torch-sys (`links = "tch"`) publishes the directory it linked against.
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // The linker drops libtorch_cuda under --as-needed because no symbol of ours refers to it;
    // without it a GPU machine would silently run on the CPU.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        for target in ["-bin=tripmine-torch", "-tests", "-examples"] {
            for arg in ["-Wl,--no-as-needed", "-ltorch_cuda", "-Wl,--as-needed"] {
                println!("cargo:rustc-link-arg{target}={arg}");
            }
        }
    }
}
