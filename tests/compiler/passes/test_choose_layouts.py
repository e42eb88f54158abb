"""choose-layouts, written as the IR before the pass and the IR expected after it: which
activations the chosen kernels hand over feature-major."""

from sparsec.compiler.passes import choose_layouts
from tests.compiler.passes.helpers import ir, run_passes, selecting

CHAIN = """
    graph opset=17
      input  'x': float32[128x64]
      const  'w': float32[64x64] const
      %0 Dense('x', 'w', '') -> 'h1': float32[128x64]  {activation='', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}  => {first}
      %1 Dense('h1', 'w', '') -> 'h2': float32[128x64]  {activation='Relu', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}  => {second}
      %2 Dense('h2', 'w', '') -> 'y'  {activation='', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}  => {third}
      output 'y': float32[128x64]
    """


def test_token_tile_kernels_hand_their_activations_over_feature_major():
    """Between two token-tile kernels the activation stays transposed (no transpose either
    side); the GEMM after the second reads it through strides; the graph's input and output
    stay row-major."""
    spmm = "sparsec_f32_spmm_ukernel_32x1_u__avx2"
    gemm = "sparsec_f32_gemm_ukernel_6x16__avx2"
    before = CHAIN.replace("{first}", spmm).replace("{second}", spmm).replace("{third}", gemm)
    assert run_passes(before, choose_layouts, ctx=selecting("x86-avx2")) == ir(f"""
        graph opset=17
          input  'x': float32[128x64]
          const  'w': float32[64x64] const
          %0 Dense('x', 'w', '') -> 'h1': float32[128x64] layout=feature-major  {{activation='', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}}  => {spmm}
          %1 Dense('h1', 'w', '') -> 'h2': float32[128x64] layout=feature-major  {{activation='Relu', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}}  => {spmm}
          %2 Dense('h2', 'w', '') -> 'y'  {{activation='', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}}  => {gemm}
          output 'y': float32[128x64]
        """)


def test_row_major_kernels_keep_every_activation_row_major():
    scalar = "sparsec_f32_spmm_ukernel_4x1_u__scalar"
    before = CHAIN.replace("{first}", scalar).replace("{second}", scalar)
    before = before.replace("{third}", scalar)
    assert run_passes(before, choose_layouts, ctx=selecting("generic")) == ir(before)



def test_a_reader_that_transposes_its_activations_keeps_them_row_major():
    """A Dense with trans_a reads A^T itself (its kernel takes A's strides as they are):
    handed 'h' feature-major it would compute with A untransposed. 'h' stays row-major, though
    both kernels could hand it over."""
    spmm = "sparsec_f32_spmm_ukernel_32x1_u__avx2"
    before = f"""
        graph opset=17
          input  'x': float32[128x64]
          const  'v': float32[128x64] const
          const  'w': float32[64x64] const
          %0 Dense('x', 'w', '') -> 'h': float32[128x64]  {{activation='', alpha=1.0, beta=1.0, trans_a=0, trans_b=0}}  => {spmm}
          %1 Dense('h', 'v', '') -> 'y'  {{activation='', alpha=1.0, beta=1.0, trans_a=1, trans_b=0}}  => {spmm}
          output 'y': float32[64x64]
        """
    assert run_passes(before, choose_layouts, ctx=selecting("x86-avx2")) == ir(before)
