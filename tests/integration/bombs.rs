//! Hostile components that only a compiler sees, made with `wasm-encoder`:
//! shared by the plugin guardrail tests and the noisy-neighbour bench
//! (`benches/noisy_neighbour.rs` includes this file by path).

use wasm_encoder::{
    BlockType, CodeSection, Component, Function, FunctionSection, Instruction, Module, ModuleSection, TypeSection,
    ValType,
};

/// A component holding one core module whose functions are `bodies`.
pub fn component(bodies: &[Function]) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut funcs = FunctionSection::new();
    let mut code = CodeSection::new();
    for f in bodies {
        funcs.function(0);
        code.function(f);
    }
    let mut module = Module::new();
    module.section(&types).section(&funcs).section(&code);
    let mut c = Component::new();
    c.section(&ModuleSection(&module));
    c.finish()
}

/// Valid code that stays inside every pre-compile limit but is expensive
/// to compile: ~8.6 MB of register-allocation-heavy arithmetic over 2,000
/// locals in 36 functions of ~240 KB each.
pub fn heavy_component() -> Vec<u8> {
    let mut bodies = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % u64::from(n)) as u32
    };
    for _ in 0..36 {
        let mut f = Function::new([(2_000, ValType::I64)]);
        for _ in 0..17_000 {
            f.instruction(&Instruction::LocalGet(next(2_000)));
            f.instruction(&Instruction::LocalGet(next(2_000)));
            f.instruction(&Instruction::I64Mul);
            f.instruction(&Instruction::LocalGet(next(2_000)));
            f.instruction(&Instruction::I64Add);
            f.instruction(&Instruction::LocalSet(next(2_000)));
        }
        f.instruction(&Instruction::End);
        bodies.push(f);
    }
    component(&bodies)
}

/// One function of `depth` nested blocks.
pub fn deep_component(depth: usize) -> Vec<u8> {
    let mut f = Function::new([]);
    for _ in 0..depth {
        f.instruction(&Instruction::Block(BlockType::Empty));
    }
    for _ in 0..=depth {
        f.instruction(&Instruction::End);
    }
    component(&[f])
}
