//! Checks an uploaded component before anything compiles it: a compile bomb
//! (one function of millions of nested blocks, a megabyte of straight-line
//! code, a million locals) is refused in milliseconds with the limit it
//! broke, instead of burning a core in Cranelift.
//!
//! One pass of `wasmparser` over the component and every core module nested
//! in it, reading each function body's locals and operators once: linear in
//! the artifact's size. Full validation is left to the compiler; this pass
//! only bounds what compiling can cost.

use wasmparser::{Operator, Parser, Payload};

use super::PluginError;
use crate::config::PluginsConfig;

/// What a component may contain before it is compiled (from `[plugins]`).
#[derive(Debug, Clone, Copy)]
pub struct CodeLimits {
    pub max_function_bytes: usize,
    pub max_nesting_depth: u32,
    pub max_locals: u64,
    pub max_functions: u64,
}

impl CodeLimits {
    pub fn from_config(c: &PluginsConfig) -> Self {
        Self {
            max_function_bytes: c.max_function_bytes as usize,
            max_nesting_depth: c.max_nesting_depth,
            max_locals: u64::from(c.max_locals),
            max_functions: u64::from(c.max_functions),
        }
    }
}

/// Refuse `bytes` if any function breaks `limits`. Malformed input is left
/// for the compiler to describe, except where this pass cannot read past it.
pub fn check(bytes: &[u8], limits: &CodeLimits) -> Result<(), PluginError> {
    let mut functions: u64 = 0;
    let mut index: u64 = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| PluginError::Invalid(format!("not a valid component: {e}")))?;
        match payload {
            Payload::FunctionSection(s) => {
                functions += u64::from(s.count());
                if functions > limits.max_functions {
                    return Err(too_complex(format!(
                        "more than {} functions (plugins.max_functions)",
                        limits.max_functions
                    )));
                }
            }
            Payload::CodeSectionEntry(body) => {
                check_body(&body, index, limits)?;
                index += 1;
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_body(body: &wasmparser::FunctionBody<'_>, index: u64, limits: &CodeLimits) -> Result<(), PluginError> {
    let size = body.range().len();
    if size > limits.max_function_bytes {
        return Err(too_complex(format!(
            "function {index} is {size} bytes of code; the limit is {} (plugins.max_function_bytes)",
            limits.max_function_bytes
        )));
    }
    let bad = |e: wasmparser::BinaryReaderError| PluginError::Invalid(format!("function {index}: {e}"));
    let mut locals: u64 = 0;
    let mut reader = body.get_locals_reader().map_err(bad)?;
    for _ in 0..reader.get_count() {
        let (count, _) = reader.read().map_err(bad)?;
        locals += u64::from(count);
        if locals > limits.max_locals {
            return Err(too_complex(format!(
                "function {index} declares more than {} locals (plugins.max_locals)",
                limits.max_locals
            )));
        }
    }
    let mut ops = body.get_operators_reader().map_err(bad)?;
    // The function body itself is one open block.
    let mut depth: u32 = 1;
    while !ops.eof() {
        match ops.read().map_err(bad)? {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => {
                depth += 1;
                if depth > limits.max_nesting_depth {
                    return Err(too_complex(format!(
                        "function {index} nests blocks deeper than {} (plugins.max_nesting_depth)",
                        limits.max_nesting_depth
                    )));
                }
            }
            Operator::End => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn too_complex(what: String) -> PluginError {
    PluginError::Invalid(format!("component too complex to compile: {what}"))
}

#[cfg(test)]
mod tests {
    use wasm_encoder::{
        BlockType, CodeSection, Component, Function, FunctionSection, Instruction, Module, ModuleSection, TypeSection,
    };

    use super::*;

    fn limits() -> CodeLimits {
        CodeLimits::from_config(&PluginsConfig::default())
    }

    /// A component holding one core module with one `() -> ()` function.
    fn component(f: &Function) -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([], []);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        let mut code = CodeSection::new();
        code.function(f);
        let mut module = Module::new();
        module.section(&types).section(&funcs).section(&code);
        let mut c = Component::new();
        c.section(&ModuleSection(&module));
        c.finish()
    }

    fn nested(depth: usize) -> Function {
        let mut f = Function::new([]);
        for _ in 0..depth {
            f.instruction(&Instruction::Block(BlockType::Empty));
        }
        for _ in 0..depth {
            f.instruction(&Instruction::End);
        }
        f.instruction(&Instruction::End);
        f
    }

    #[test]
    fn ordinary_code_passes() {
        assert!(check(&component(&nested(10)), &limits()).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let e = check(&component(&nested(10_000)), &limits()).expect_err("refused");
        assert!(e.to_string().contains("max_nesting_depth"), "{e}");
    }

    #[test]
    fn huge_function_is_refused() {
        let mut f = Function::new([]);
        for _ in 0..300_000 {
            f.instruction(&Instruction::Nop);
        }
        f.instruction(&Instruction::End);
        let e = check(&component(&f), &limits()).expect_err("refused");
        assert!(e.to_string().contains("max_function_bytes"), "{e}");
    }

    #[test]
    fn many_locals_are_refused() {
        let mut f = Function::new([(1_000_000, wasm_encoder::ValType::I64)]);
        f.instruction(&Instruction::End);
        let e = check(&component(&f), &limits()).expect_err("refused");
        assert!(e.to_string().contains("max_locals"), "{e}");
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        assert!(check(b"\0asm\x0d\0\x01\0\xff\xff\xff", &limits()).is_err());
        let whole = component(&nested(3));
        assert!(check(&whole[..whole.len() - 3], &limits()).is_err());
    }
}
