// Link against the library's own shared object, built by the Makefile in
// ../build, exactly as a C program would (-lvirt-backup -lvirt). The
// installed binary finds it next to itself in $(PREFIX)/lib, unless
// VIRT_BACKUP_NO_RPATH is set.
fn main() {
    let dir = std::env::var("VIRT_BACKUP_LIBDIR").unwrap_or_else(|_| {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        format!("{manifest}/../build")
    });
    println!("cargo:rerun-if-env-changed=VIRT_BACKUP_LIBDIR");
    println!("cargo:rerun-if-changed={dir}/libvirt-backup.so.0");
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=dylib=virt-backup");
    println!("cargo:rustc-link-lib=dylib=virt");
    // Installed under /usr (Debian's package) the loader finds the library;
    // a search path of our own there is what lintian flags.
    println!("cargo:rerun-if-env-changed=VIRT_BACKUP_NO_RPATH");
    if std::env::var_os("VIRT_BACKUP_NO_RPATH").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN/../lib");
    }
}
