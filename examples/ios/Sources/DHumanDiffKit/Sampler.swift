// The few-step sampler loop of dhumandiff/runtimes/generator.py (steps 4-5) for CFG-free students, driven
// by the generated `SchedulerTables` instead of a hand-ported scheduler: every LCM / TCD step is linear in
// (latents, model output, noise), so Python folds the scheduler maths into three numbers per step and the
// Swift side only multiplies and adds. tests/test_ios_sample.py replays these tables against the NumPy
// schedulers, so this loop samples what `dhumandiff generate --bundle` samples.

import Foundation

/// One (sampler, step count) of the generated tables.
public struct StepTable {
    public let sampler: String
    public let eta: Float
    public let timesteps: [Int]
    public let sampleScale: [Float]
    public let outputScale: [Float]
    public let noiseScale: [Float]

    public init(sampler: String, eta: Float, timesteps: [Int], sampleScale: [Float], outputScale: [Float],
                noiseScale: [Float]) {
        self.sampler = sampler
        self.eta = eta
        self.timesteps = timesteps
        self.sampleScale = sampleScale
        self.outputScale = outputScale
        self.noiseScale = noiseScale
    }

    public var count: Int { timesteps.count }
}

public enum SamplerError: Error, CustomStringConvertible {
    case noTable(sampler: String, steps: Int, available: [Int])

    public var description: String {
        switch self {
        case let .noTable(sampler, steps, available):
            return "no \(sampler) table for \(steps) steps (tabulated: \(available.map(String.init).joined(separator: ", "))); "
                + "regenerate SchedulerTables.swift with `python -m dhumandiff.runtimes.swift_tables BUNDLE`"
        }
    }
}

extension SchedulerTables {
    /// The table for `sampler` ("lcm" or "tcd") at `steps` steps.
    public static func table(sampler: String, steps: Int) throws -> StepTable {
        let name = sampler.lowercased()
        if let t = SchedulerTables.steps.first(where: { $0.sampler == name && $0.count == steps }) {
            return t
        }
        let available = SchedulerTables.steps.filter { $0.sampler == name }.map(\.count)
        throw SamplerError.noTable(sampler: name, steps: steps, available: available)
    }
}

/// Standard normal noise from a seed. NOT NumPy's PCG64 stream: the same seed gives the same image on every
/// Apple device, but not the image `dhumandiff generate --seed` makes in Python (see examples/ios/README.md).
public struct NoiseSource {
    private var state: UInt64
    private var spare: Float?

    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }

    /// SplitMix64: small, fast, and good enough to feed Box-Muller.
    private mutating func nextUInt64() -> UInt64 {
        state = state &+ 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in (0, 1], 53 bits.
    private mutating func uniform() -> Double {
        Double((nextUInt64() >> 11) &+ 1) * 0x1.0p-53
    }

    public mutating func normal() -> Float {
        if let s = spare {
            spare = nil
            return s
        }
        let r = (-2.0 * log(uniform())).squareRoot()
        let theta = 2.0 * Double.pi * uniform()
        spare = Float(r * sin(theta))
        return Float(r * cos(theta))
    }

    public mutating func normals(_ count: Int) -> [Float] {
        (0..<count).map { _ in normal() }
    }
}

/// The sampler loop: `latents = noise`, then per step `model(latents, t)` and the tabulated update.
public struct ConsistencySampler {
    public let table: StepTable

    public init(table: StepTable) { self.table = table }

    /// One step: `sampleScale[i] * latents + outputScale[i] * modelOutput + noiseScale[i] * noise`. Noise is
    /// drawn only when the step uses it (not on the last step), in the order the NumPy sampler draws it.
    public func step(_ i: Int, latents: [Float], modelOutput: [Float], noise: inout NoiseSource) -> [Float] {
        precondition(latents.count == modelOutput.count, "latents and model output differ in size")
        let a = table.sampleScale[i], b = table.outputScale[i], c = table.noiseScale[i]
        var out = [Float](repeating: 0, count: latents.count)
        if c == 0 {
            for k in 0..<out.count { out[k] = a * latents[k] + b * modelOutput[k] }
        } else {
            let z = noise.normals(latents.count)
            for k in 0..<out.count { out[k] = a * latents[k] + b * modelOutput[k] + c * z[k] }
        }
        return out
    }

    /// Runs every step. `model(latents, timestep)` is the UNet (noise_pred for `sample` at `timestep`).
    /// LCM / TCD have init_noise_sigma 1 and an identity scale_model_input, so latents go in unchanged.
    public func sample(latentCount: Int, noise: inout NoiseSource,
                       progress: ((Int, Int) -> Void)? = nil,
                       model: ([Float], Float) throws -> [Float]) rethrows -> [Float] {
        var latents = noise.normals(latentCount)
        for i in 0..<table.count {
            let output = try model(latents, Float(table.timesteps[i]))
            latents = step(i, latents: latents, modelOutput: output, noise: &noise)
            progress?(i + 1, table.count)
        }
        return latents
    }
}
