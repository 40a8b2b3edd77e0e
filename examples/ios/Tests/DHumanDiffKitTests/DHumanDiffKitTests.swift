// `swift test` (macOS, or Linux with a Swift toolchain): the pure-Swift half of the sample. The tables
// themselves are checked against the NumPy schedulers on the Python side (tests/test_ios_sample.py); here the
// Swift code that reads them is checked against the schedulers' closed forms.

import XCTest
@testable import DHumanDiffKit

final class SchedulerTableTests: XCTestCase {
    func testTablesAreWellFormed() throws {
        XCTAssertEqual(SchedulerTables.alphasCumprod.count, SchedulerTables.config["num_train_timesteps"] as? Int)
        for t in SchedulerTables.steps {
            XCTAssertEqual(t.sampleScale.count, t.count)
            XCTAssertEqual(t.outputScale.count, t.count)
            XCTAssertEqual(t.noiseScale.count, t.count)
            XCTAssertEqual(t.noiseScale.last, 0, "the last step of \(t.sampler) draws no noise")
            XCTAssertEqual(t.timesteps, t.timesteps.sorted(by: >))
        }
        XCTAssertEqual(try SchedulerTables.table(sampler: "lcm", steps: 4).timesteps, [999, 759, 499, 259])
        XCTAssertThrowsError(try SchedulerTables.table(sampler: "lcm", steps: 3))
    }

    /// LCMScheduler.step for v-prediction, written out from alphas_cumprod: the tables must be its coefficients.
    func testLCMTableMatchesClosedForm() throws {
        guard SchedulerTables.config["prediction_type"] as? String == "v_prediction" else { return }
        let scaling = SchedulerTables.config["timestep_scaling"] as? Double ?? 10
        for t in SchedulerTables.steps where t.sampler == "lcm" {
            for i in 0..<t.count {
                let ts = t.timesteps[i]
                let a = Double(SchedulerTables.alphasCumprod[ts])
                let aPrev = i + 1 < t.count ? Double(SchedulerTables.alphasCumprod[t.timesteps[i + 1]]) : a
                let s = Double(ts) * scaling
                let cSkip = 0.25 / (s * s + 0.25), cOut = s / (s * s + 0.25).squareRoot()
                // x0 = sqrt(a) x - sqrt(1 - a) v ; denoised = cOut x0 + cSkip x ; prev = sqrt(aPrev) denoised + ...
                let last = i == t.count - 1
                let k = last ? 1.0 : aPrev.squareRoot()
                XCTAssertEqual(Double(t.sampleScale[i]), k * (cOut * a.squareRoot() + cSkip), accuracy: 1e-6)
                XCTAssertEqual(Double(t.outputScale[i]), -k * cOut * (1 - a).squareRoot(), accuracy: 1e-6)
                XCTAssertEqual(Double(t.noiseScale[i]), last ? 0 : (1 - aPrev).squareRoot(), accuracy: 1e-6)
            }
        }
    }

    func testSamplerRunsTheTable() throws {
        let table = try SchedulerTables.table(sampler: "lcm", steps: 2)
        var noise = NoiseSource(seed: 7)
        var calls: [Float] = []
        let half: ([Float], Float) -> [Float] = { x, t in
            calls.append(t)
            return x.map { $0 * 0.5 }
        }
        let out = ConsistencySampler(table: table).sample(latentCount: 8, noise: &noise, model: half)
        XCTAssertEqual(calls, [999, 499])
        XCTAssertEqual(out.count, 8)
        var again = NoiseSource(seed: 7)
        let repeated = ConsistencySampler(table: table).sample(latentCount: 8, noise: &again, model: half)
        XCTAssertEqual(repeated, out, "same seed, same latents")
    }

    func testNoiseIsStandardNormal() {
        var noise = NoiseSource(seed: 1)
        let z = noise.normals(20000)
        let mean = z.reduce(0, +) / Float(z.count)
        let variance = z.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(z.count)
        XCTAssertEqual(mean, 0, accuracy: 0.03)
        XCTAssertEqual(variance, 1, accuracy: 0.05)
    }
}

final class LayoutAndTokenizerTests: XCTestCase {
    func testAutomaticLayoutSplitsLeftAndRight() {
        let mask = PersonLayout.automatic.regionMask(height: 16, width: 16)
        XCTAssertEqual(mask.count, 2 * 16 * 16)
        XCTAssertEqual(mask[0 * 256 + 8 * 16 + 2], 1)   // person A, left
        XCTAssertEqual(mask[1 * 256 + 8 * 16 + 2], 0)
        XCTAssertEqual(mask[1 * 256 + 8 * 16 + 13], 1)  // person B, right
        XCTAssertEqual(mask[0 * 256 + 0 * 16 + 2], 0)   // top margin
    }

    func testPersonWordsInPromptOrder() throws {
        let spans = try PromptTokenizer.personSpans("a woman and a man on the beach", words: nil)
        XCTAssertEqual(spans.map { $0.0 }, ["woman", "man"])
        XCTAssertThrowsError(try PromptTokenizer.personSpans("a dog on the beach", words: nil))
    }

    func testBPEMergesLowestRankFirst() {
        let ranks = ["l o": 0, "lo w</w>": 1, "h e": 2]
        XCTAssertEqual(PromptTokenizer.bpe(["l", "o", "w"], ranks: ranks, suffix: "</w>"), ["low</w>"])
        XCTAssertEqual(PromptTokenizer.bpe(["h", "e", "y"], ranks: ranks, suffix: "</w>"), ["he", "y</w>"])
    }
}
