//! Any bytes as a main file (with includable files beside it) compile without a panic.
#![no_main]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use portico::config::{Fs, Options, Paths, compile};

struct MemFs(HashMap<PathBuf, Vec<u8>>);

impl Fs for MemFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0.get(path).cloned().ok_or_else(|| io::Error::from_raw_os_error(2))
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        let p = pattern.to_string_lossy();
        let prefix = p.split(['*', '?', '[']).next().unwrap_or("");
        let mut out: Vec<PathBuf> =
            self.0.keys().filter(|k| k.to_string_lossy().starts_with(prefix)).cloned().collect();
        out.sort();
        Ok(out)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut files = HashMap::new();
    files.insert(PathBuf::from("/conf/nginx.conf"), data.to_vec());
    files.insert(PathBuf::from("/conf/a.conf"), b"server { listen 80; location / { return 200; } }".to_vec());
    files.insert(PathBuf::from("/conf/sites/b.conf"), b"include nginx.conf; map $a $b { default 1; }".to_vec());
    let fs = MemFs(files);
    let options = Options { paths: Paths::new(Path::new("/conf/"), Path::new("nginx.conf")), globals: None, mode: None };
    let _ = compile(&fs, &options);
});
