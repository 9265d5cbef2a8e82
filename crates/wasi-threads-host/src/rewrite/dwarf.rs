//! The module's DWARF, carried over to the rewritten module with every code
//! address remapped.
//!
//! In wasm, DWARF code addresses are offsets from the start of the code
//! section's payload (the function count), so every address, range, line
//! table row and location list entry is translated through the
//! [`OffsetMap`]. gimli's own address callback is applied only to absolute
//! addresses, not to lengths (`DW_AT_high_pc`), offsets within line
//! sequences or base-relative ranges, so those are converted here from
//! their absolute values. What cannot be remapped is dropped, and counted
//! in a `debug` log line.

use super::OffsetMap;
use gimli::write::{self, Address, ConvertResult, ConvertUnit, ConvertUnitEntry};
use gimli::{EndianSlice, LittleEndian, constants};
use std::ops::Range;
use wasmtime::{Engine, Result};

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// Sections the conversion does not produce and that would describe the old
/// addresses (or offsets into sections that change): left out.
const NOT_CARRIED: &[&str] = &[
    ".debug_aranges",
    ".debug_pubnames",
    ".debug_pubtypes",
    ".debug_names",
    ".debug_macro",
    ".debug_macinfo",
];

/// Translates DWARF code addresses of the original module into those of the
/// rewritten one.
struct Addresses<'a> {
    map: &'a OffsetMap,
    original_base: u64,
    rewritten_base: u64,
}

impl Addresses<'_> {
    fn convert(&self, address: u64) -> Option<u64> {
        // wasm-ld marks the code of functions it dropped with a tombstone
        // (-1, or -2 in range lists): not a code address.
        if address >= 0xffff_fffe {
            return Some(address);
        }
        let original = usize::try_from(self.original_base + address).ok()?;
        let rewritten = self.map.rewritten_offset(original)? as u64;
        rewritten.checked_sub(self.rewritten_base)
    }
}

#[derive(Default)]
struct Dropped {
    attributes: usize,
    rows: usize,
    ranges: usize,
}

/// Whether `engine` reads a module's DWARF: for file and line in trap
/// backtraces (`Config::wasm_backtrace_details`, which by default follows
/// `WASMTIME_BACKTRACE_DETAILS`) or for native debuggers
/// (`Config::debug_info`). Otherwise Wasmtime only notes that the module has
/// some, and remapping it is wasted work (a tenth of a first start of a
/// large module built with debug info).
///
/// Wasmtime tells its settings only through `Config`'s `Debug` output; if
/// that ever stops saying plainly that the DWARF is not parsed, the answer
/// is yes (the DWARF is then remapped as always).
pub(super) fn wanted(engine: &Engine) -> bool {
    let config = format!("{:?}", engine.config());
    config.contains("debug_native: true") || !config.contains("parse_wasm_debuginfo: false")
}

/// Whether `binary` carries DWARF: a `.debug_*` section that is not empty
/// (the marker [`without_unread_dwarf`] leaves is).
pub(super) fn carries_dwarf(binary: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(binary).any(|payload| {
        matches!(payload, Ok(wasmparser::Payload::CustomSection(section))
            if section.name().starts_with(".debug_") && !section.data().is_empty())
    })
}

/// The name of the (empty) section left in place of DWARF nobody reads.
const MARKER: &str = ".debug_info";

/// `binary` as `engine` will use it: without its DWARF if the engine does
/// not read it (see [`wanted`]), so that the rewrite neither remaps it nor
/// copies it. An empty `.debug_info` section stays in its place, so that
/// Wasmtime still knows the module had debug information (its trap messages
/// then suggest `WASMTIME_BACKTRACE_DETAILS=1`, as for the original module).
///
/// Only DWARF after the code section is taken out, so that every code
/// offset of the result is that of `binary` (the offset map speaks of the
/// module the user built); anything unusual (DWARF before the code, a
/// component, bytes that do not parse) leaves `binary` as it is for the
/// rewrite to judge.
pub(super) fn without_unread_dwarf<'a>(
    engine: &Engine,
    binary: &'a [u8],
) -> std::borrow::Cow<'a, [u8]> {
    let Some(debug) = debug_sections_after_code(binary) else {
        return binary.into();
    };
    // Nothing, or only a marker left by an earlier call: nothing to take out.
    if debug.iter().all(|(_, empty)| *empty) || wanted(engine) {
        return binary.into();
    }
    let debug: Vec<Range<usize>> = debug.into_iter().map(|(range, _)| range).collect();
    let removed: usize = debug.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(binary.len() - removed + MARKER.len() + 2);
    let mut at = 0;
    for range in &debug {
        out.extend_from_slice(&binary[at..range.start]);
        at = range.end;
    }
    out.extend_from_slice(&binary[at..]);
    // A custom section (id 0): its size, then its name (length-prefixed).
    out.extend_from_slice(&[0, MARKER.len() as u8 + 1, MARKER.len() as u8]);
    out.extend_from_slice(MARKER.as_bytes());
    out.into()
}

/// The byte ranges (section headers included) of `binary`'s `.debug_*`
/// custom sections and whether each is empty, if all of them come after its
/// code section; `None` if some come before it, there is no code, or
/// `binary` is not a core module that parses.
fn debug_sections_after_code(binary: &[u8]) -> Option<Vec<(Range<usize>, bool)>> {
    use wasmparser::{Chunk, Parser, Payload};
    let mut parser = Parser::new(0);
    let mut at = 0;
    let mut code_seen = false;
    let mut debug = Vec::new();
    loop {
        let Chunk::Parsed { consumed, payload } = parser.parse(binary.get(at..)?, true).ok()?
        else {
            return None;
        };
        let start = at;
        at += consumed;
        match payload {
            Payload::Version {
                encoding: wasmparser::Encoding::Module,
                ..
            } => {}
            Payload::Version { .. } => return None,
            Payload::CodeSectionStart { size, .. } => {
                // The bodies are the rewrite's business: step over them.
                parser.skip_section();
                at += size as usize;
                code_seen = true;
            }
            Payload::CustomSection(section) if section.name().starts_with(".debug_") => {
                if !code_seen {
                    return None;
                }
                debug.push((start..at, section.data().is_empty()));
            }
            Payload::End(_) => break,
            _ => {}
        }
    }
    code_seen.then_some(debug)
}

/// The `.debug_*` sections of `binary` (name, range of its data), remapped
/// for the rewritten module described by `map`.
pub(super) fn remap(
    binary: &[u8],
    sections: &[(String, Range<usize>)],
    map: &OffsetMap,
) -> Result<Vec<(String, Vec<u8>)>> {
    // Nothing to remap (the marker `without_unread_dwarf` leaves): kept as
    // it is, so that the rewritten module still says it had DWARF.
    if sections.iter().all(|(_, range)| range.is_empty()) {
        return Ok(sections
            .iter()
            .map(|(name, _)| (name.clone(), Vec::new()))
            .collect());
    }
    let section = |name: &str| -> &[u8] {
        sections
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, range)| binary.get(range.clone()))
            .unwrap_or_default()
    };
    let read = gimli::read::Dwarf::load(|id| -> gimli::Result<Reader<'_>> {
        Ok(EndianSlice::new(section(id.name()), LittleEndian))
    })?;
    let addresses = Addresses {
        map,
        original_base: map.original_code().start as u64,
        rewritten_base: map.rewritten_code().start as u64,
    };
    let mut dropped = Dropped::default();
    let mut dwarf = write::Dwarf::new();
    {
        let mut convert = dwarf.convert(&read)?;
        while let Some((mut unit, root)) = convert.read_unit()? {
            convert_line_program(&mut unit, &addresses, &mut dropped)?;
            let root_id = unit.unit.root();
            convert_entry(&mut unit, root_id, &root, &addresses, &mut dropped);
            let mut entry = root;
            while let Some(id) = unit.read_entry(&mut entry)? {
                if id.is_none() {
                    continue;
                }
                let id = unit.add_entry(id, &entry);
                convert_entry(&mut unit, id, &entry, &addresses, &mut dropped);
            }
        }
    }
    let mut out = write::Sections::new(write::EndianVec::new(LittleEndian));
    dwarf.write(&mut out)?;
    let mut remapped = Vec::new();
    out.for_each(|id, data| -> Result<(), gimli::Error> {
        if !data.slice().is_empty() {
            remapped.push((id.name().to_string(), data.slice().to_vec()));
        }
        Ok(())
    })?;
    let left_out: Vec<&str> = sections
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| NOT_CARRIED.contains(name) || !remapped.iter().any(|(n, _)| n == name))
        .collect();
    if dropped.attributes + dropped.rows + dropped.ranges > 0 || !left_out.is_empty() {
        log::debug!(
            "DWARF remapped for the rewritten module; dropped what could not be: {} attribute(s), \
             {} line row(s), {} range(s), sections {left_out:?}",
            dropped.attributes,
            dropped.rows,
            dropped.ranges,
        );
    }
    Ok(remapped)
}

/// Rebuilds the unit's line program with every row at its remapped address.
/// A sequence keeps one base address, so rows stay offsets from it.
fn convert_line_program(
    unit: &mut ConvertUnit<'_, Reader<'_>>,
    addresses: &Addresses<'_>,
    dropped: &mut Dropped,
) -> ConvertResult<()> {
    let Some(mut convert) = unit.read_line_program(None, None)? else {
        return Ok(());
    };
    let mut base: Option<u64> = None;
    let mut last = 0;
    while let Some(sequence) = convert.read_sequence()? {
        let start = sequence.start.unwrap_or(0);
        for mut row in sequence.rows {
            let Some(new) = addresses.convert(start + row.address_offset) else {
                dropped.rows += 1;
                continue;
            };
            let base = *base.get_or_insert_with(|| {
                convert.begin_sequence(Some(Address::Constant(new)));
                new
            });
            let Some(offset) = new.checked_sub(base).filter(|o| *o >= last) else {
                dropped.rows += 1;
                continue;
            };
            last = offset;
            row.address_offset = offset;
            convert.generate_row(row);
        }
        if let write::ConvertLineSequenceEnd::Length(length) = sequence.end {
            if let Some(b) = base.take() {
                let end = addresses
                    .convert(start + length)
                    .and_then(|end| end.checked_sub(b))
                    .filter(|end| *end >= last)
                    .unwrap_or(last);
                convert.end_sequence(end);
            }
            last = 0;
        }
    }
    if convert.in_sequence() {
        convert.end_sequence(last);
    }
    let (program, files) = convert.program();
    unit.set_line_program(program, files);
    Ok(())
}

/// Converts one DIE's attributes, dropping those that cannot be remapped.
fn convert_entry<'a, 'r>(
    unit: &mut ConvertUnit<'a, Reader<'r>>,
    id: write::UnitEntryId,
    entry: &ConvertUnitEntry<'a, Reader<'r>>,
    addresses: &Addresses<'_>,
    dropped: &mut Dropped,
) {
    let read_unit = entry.read_unit;
    let address_of = |value: gimli::AttributeValue<Reader<'r>>| match value {
        gimli::AttributeValue::Addr(a) => Some(a),
        gimli::AttributeValue::DebugAddrIndex(i) => read_unit.address(i).ok(),
        _ => None,
    };
    let low_pc = entry
        .attrs
        .iter()
        .find(|a| a.name() == constants::DW_AT_low_pc)
        .and_then(|a| address_of(a.value()));
    let convert_address = |a: u64| addresses.convert(a).map(Address::Constant);
    for attr in &entry.attrs {
        let value = match attr.value() {
            // Not supported by gimli, and safe to leave out.
            _ if attr.name() == constants::DW_AT_GNU_locviews => continue,
            // Offsets into sections not carried over.
            gimli::AttributeValue::DebugMacinfoRef(_) | gimli::AttributeValue::DebugMacroRef(_) => {
                dropped.attributes += 1;
                continue;
            }
            value if attr.name() == constants::DW_AT_high_pc && address_of(value).is_none() => {
                // A length from `DW_AT_low_pc`: the new length is the
                // distance between the remapped ends.
                let new = attr.udata_value().zip(low_pc).and_then(|(length, low)| {
                    let end = addresses.convert(low + length)?;
                    end.checked_sub(addresses.convert(low)?)
                });
                new.map(write::AttributeValue::Udata)
            }
            gimli::AttributeValue::RangeListsRef(raw) => {
                let offset = read_unit.ranges_offset_from_raw(raw);
                convert_ranges(unit, read_unit, offset, addresses, dropped)
            }
            gimli::AttributeValue::DebugRngListsIndex(index) => read_unit
                .ranges_offset(index)
                .ok()
                .and_then(|offset| convert_ranges(unit, read_unit, offset, addresses, dropped)),
            gimli::AttributeValue::LocationListsRef(offset) => {
                convert_locations(unit, read_unit, offset, addresses)
            }
            gimli::AttributeValue::DebugLocListsIndex(index) => read_unit
                .locations_offset(index)
                .ok()
                .and_then(|offset| convert_locations(unit, read_unit, offset, addresses)),
            _ => unit
                .convert_attribute_value(read_unit, attr, &convert_address)
                .ok(),
        };
        match value {
            Some(value) => unit.unit.get_mut(id).set(attr.name(), value),
            None => dropped.attributes += 1,
        }
    }
}

fn convert_ranges<'r>(
    unit: &mut ConvertUnit<'_, Reader<'r>>,
    read_unit: gimli::UnitRef<'_, Reader<'r>>,
    offset: gimli::RangeListsOffset,
    addresses: &Addresses<'_>,
    dropped: &mut Dropped,
) -> Option<write::AttributeValue> {
    // Ranges are written as absolute addresses: in DWARF 4 a list's pairs
    // are relative to the unit's base address unless the list sets one.
    let mut ranges = vec![write::Range::BaseAddress {
        address: Address::Constant(0),
    }];
    let mut iter = read_unit.ranges(offset).ok()?;
    while let Ok(Some(range)) = iter.next() {
        match (addresses.convert(range.begin), addresses.convert(range.end)) {
            // Empty ranges describe no code (and cannot be written).
            (Some(begin), Some(end)) if begin == end => {}
            (Some(begin), Some(end)) if begin < end => ranges.push(write::Range::StartEnd {
                begin: Address::Constant(begin),
                end: Address::Constant(end),
            }),
            _ => dropped.ranges += 1,
        }
    }
    let id = unit.unit.ranges.add(write::RangeList(ranges));
    Some(write::AttributeValue::RangeListRef(id))
}

fn convert_locations<'r>(
    unit: &mut ConvertUnit<'_, Reader<'r>>,
    read_unit: gimli::UnitRef<'_, Reader<'r>>,
    offset: gimli::LocationListsOffset,
    addresses: &Addresses<'_>,
) -> Option<write::AttributeValue> {
    let convert_address = |a: u64| addresses.convert(a).map(Address::Constant);
    // Absolute addresses, as for ranges.
    let mut locations = vec![write::Location::BaseAddress {
        address: Address::Constant(0),
    }];
    let mut iter = read_unit.locations(offset).ok()?;
    while let Ok(Some(entry)) = iter.next() {
        let (Some(begin), Some(end)) = (
            addresses.convert(entry.range.begin),
            addresses.convert(entry.range.end),
        ) else {
            continue;
        };
        if begin >= end {
            continue;
        }
        let Ok(data) = unit.convert_expression(read_unit, entry.data, &convert_address) else {
            continue;
        };
        locations.push(write::Location::StartEnd {
            begin: Address::Constant(begin),
            end: Address::Constant(end),
            data,
        });
    }
    let id = unit.unit.locations.add(write::LocationList(locations));
    Some(write::AttributeValue::LocationListRef(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::WasmBacktraceDetails;

    const C_DEBUG_TRAP: &[u8] = include_bytes!("../../../../wasm-fixtures/c-debug-trap.wasm");

    fn engine(details: WasmBacktraceDetails, native: bool) -> Engine {
        let mut config = crate::engine_config();
        config.wasm_backtrace_details(details).debug_info(native);
        Engine::new(&config).unwrap()
    }

    /// The custom sections of `binary`: (name, length of its data).
    fn custom_sections(binary: &[u8]) -> Vec<(String, usize)> {
        wasmparser::Parser::new(0)
            .parse_all(binary)
            .filter_map(|p| match p.unwrap() {
                wasmparser::Payload::CustomSection(s) => {
                    Some((s.name().to_string(), s.data().len()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_engine_says_whether_it_reads_dwarf() {
        assert!(!wanted(&engine(WasmBacktraceDetails::Disable, false)));
        assert!(wanted(&engine(WasmBacktraceDetails::Enable, false)));
        assert!(wanted(&engine(WasmBacktraceDetails::Disable, true)));
    }

    /// DWARF nobody reads is left out, an empty `.debug_info` in its place
    /// (Wasmtime's hint to set `WASMTIME_BACKTRACE_DETAILS` depends on it),
    /// and the code does not move: the rewrite's map of the stripped module
    /// is the map of the original.
    #[test]
    fn unread_dwarf_is_left_out_and_the_code_does_not_move() {
        let before = custom_sections(C_DEBUG_TRAP);
        assert!(before.iter().any(|(n, len)| n == ".debug_line" && *len > 0));

        let reads = engine(WasmBacktraceDetails::Enable, false);
        assert!(matches!(
            without_unread_dwarf(&reads, C_DEBUG_TRAP),
            std::borrow::Cow::Borrowed(_)
        ));

        let ignores = engine(WasmBacktraceDetails::Disable, false);
        let stripped = without_unread_dwarf(&ignores, C_DEBUG_TRAP);
        assert!(stripped.len() < C_DEBUG_TRAP.len());
        let debug: Vec<_> = custom_sections(&stripped)
            .into_iter()
            .filter(|(n, _)| n.starts_with(".debug_"))
            .collect();
        assert_eq!(debug, [(MARKER.to_string(), 0)]);
        let others = |b: &[u8]| -> Vec<(String, usize)> {
            custom_sections(b)
                .into_iter()
                .filter(|(n, _)| !n.starts_with(".debug_"))
                .collect()
        };
        assert_eq!(others(&stripped), others(C_DEBUG_TRAP));

        let (rewritten, map) = super::super::rewrite_with_map(&stripped).unwrap().unwrap();
        let (_, original_map) = super::super::rewrite_with_map(C_DEBUG_TRAP)
            .unwrap()
            .unwrap();
        // The code is where it was: every instruction of the original maps
        // to the rewritten module and back through either map (the two
        // rewrites differ: only the one without DWARF unrolls its loops).
        assert_eq!(map.original_code(), original_map.original_code());
        for payload in wasmparser::Parser::new(0).parse_all(C_DEBUG_TRAP) {
            if let wasmparser::Payload::CodeSectionEntry(body) = payload.unwrap() {
                let mut ops = body.get_operators_reader().unwrap();
                while !ops.eof() {
                    let at = ops.original_position();
                    ops.read().unwrap();
                    for map in [&map, &original_map] {
                        let moved = map.rewritten_offset(at).unwrap();
                        assert_eq!(map.original_offset(moved), Some(at));
                    }
                }
            }
        }
        // The marker survives the rewrite, still empty.
        assert!(custom_sections(&rewritten).contains(&(MARKER.to_string(), 0)));
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&rewritten)
            .unwrap();

        // Stripping again changes nothing; text and garbage are left alone.
        assert!(matches!(
            without_unread_dwarf(&ignores, &stripped),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(
            without_unread_dwarf(&ignores, b"(module)"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(
            without_unread_dwarf(&ignores, &C_DEBUG_TRAP[..C_DEBUG_TRAP.len() - 3]),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
