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
use wasmtime::Result;

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

/// The `.debug_*` sections of `binary` (name, range of its data), remapped
/// for the rewritten module described by `map`.
pub(super) fn remap(
    binary: &[u8],
    sections: &[(String, Range<usize>)],
    map: &OffsetMap,
) -> Result<Vec<(String, Vec<u8>)>> {
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
