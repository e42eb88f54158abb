"""sparsec.codegen: targets, the kernel table, rendering C and building shared libraries."""
