//! Any bytes parse without a panic, and printing the tree then parsing the print gives the
//! same tree (with no errors).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::config::ast::same_tree;
use portico::config::parse::parse;
use portico::config::print::print;
use portico::config::span::FileId;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (tree, _errors) = parse(FileId(0), &text);
    let printed = print(&tree);
    let (again, errors) = parse(FileId(0), &printed);
    assert!(errors.is_empty(), "printed text does not parse: {errors:?}\n{printed}");
    assert!(same_tree(&tree.directives, &again.directives), "round trip changed the tree:\n{printed}");
});
