//! The one matrix product the statistics and the served set's stacked linear heads share.

/// C = A·B for an m × k matrix A and a k × n matrix B, each given as (data, row stride, column
/// stride), into a row-major m × n C; the strides are checked against the slices before
/// `matrixmultiply` reads them.
pub fn gemm(m: usize, k: usize, n: usize, a: (&[f32], usize, usize), b: (&[f32], usize, usize), c: &mut [f32]) {
    let last = |rows: usize, cols: usize, (data, rs, cs): (&[f32], usize, usize)| {
        assert!(rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < data.len(), "gemm: stride out of bounds");
    };
    last(m, k, a);
    last(k, n, b);
    assert_eq!(c.len(), m * n, "gemm: C is m × n");
    // SAFETY: every element A[i][l] = a[i·rs + l·cs] (i < m, l < k), B[l][j] (l < k, j < n) and
    // C[i][j] = c[i·n + j] lies inside its slice (checked above); C does not alias A or B (&mut).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.0.as_ptr(),
            a.1 as isize,
            a.2 as isize,
            b.0.as_ptr(),
            b.1 as isize,
            b.2 as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}
