// Two person boxes -> the UNet's region_mask [1, 2, h, w] (dhumandiff/utils/regions.py): a latent cell belongs
// to a person when its centre lies inside that person's box; where boxes overlap both channels are 1.

import Foundation

public struct PersonLayout {
    /// Normalised [x0, y0, x1, y1] of person A (face A) and person B (face B).
    public let personA: [Double]
    public let personB: [Double]

    public init(personA: [Double], personB: [Double]) {
        self.personA = personA
        self.personB = personB
    }

    /// The automatic layout: A on the left half, B on the right, with margins. The values are the float32
    /// boxes of regions.default_boxes(), widened to Double exactly as the Python side does.
    public static let automatic = PersonLayout(
        personA: [Float(0.04), Float(0.08), Float(0.50), Float(1.0)].map(Double.init),
        personB: [Float(0.50), Float(0.08), Float(0.96), Float(1.0)].map(Double.init))

    /// Channel-major [2 * h * w] float mask (batch 1).
    public func regionMask(height h: Int, width w: Int) -> [Float] {
        var mask = [Float](repeating: 0, count: 2 * h * w)
        for (k, box) in [personA, personB].enumerated() {
            for y in 0..<h {
                let cy = (Double(y) + 0.5) / Double(h)
                guard cy >= box[1] && cy < box[3] else { continue }
                for x in 0..<w {
                    let cx = (Double(x) + 0.5) / Double(w)
                    if cx >= box[0] && cx < box[2] { mask[(k * h + y) * w + x] = 1 }
                }
            }
        }
        return mask
    }
}
