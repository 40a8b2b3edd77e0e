// A plain row-major float tensor: what the pipeline hands to a graph and gets back. Integer inputs
// (input_ids, subject_positions) travel as exact small integers and are cast to the graph's declared type
// (Core ML has no int64: the bundle's int64 inputs are int32 in the mlpackage).

import Foundation

public struct Tensor {
    public var shape: [Int]
    public var values: [Float]

    public init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count,
                     "tensor of shape \(shape) needs \(shape.reduce(1, *)) values, got \(values.count)")
        self.shape = shape
        self.values = values
    }

    public init(shape: [Int], ints: [Int32]) {
        self.init(shape: shape, values: ints.map { Float($0) })
    }

    public static func scalar(_ v: Float) -> Tensor { Tensor(shape: [1], values: [v]) }

    /// Concatenation on axis 1 of batch-1 tensors ([1, n, ...] + [1, m, ...] -> [1, n + m, ...]).
    public static func concatTokens(_ a: Tensor, _ b: Tensor) -> Tensor {
        precondition(a.shape.first == 1 && b.shape.first == 1 && Array(a.shape.dropFirst(2)) == Array(b.shape.dropFirst(2)),
                     "concatTokens needs batch-1 tensors with equal trailing shapes")
        var shape = a.shape
        shape[1] += b.shape[1]
        return Tensor(shape: shape, values: a.values + b.values)
    }
}
