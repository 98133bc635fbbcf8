package apel

import (
	"bytes"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// FieldMap returns r as one flat JSON object for the Logstash messenger
// (json_lines codec: one object per record per line). Its shape:
//
//	{
//	  "record_type": "cloud",            // cloud, accelerator, ip, storage or energy
//	  "record_key":  "cloud/SITE/uuid",  // the record's identity (Record.key)
//	  "provenance": {                    // where and when it was extracted; empty keys left out
//	    "region": "RegionOne", "site": "SITE", "service": "SITE",
//	    "extractor": "extractor-nova", "project_id": "...",
//	    "window_from": 1700000000, "window_to": 1700003600, "extracted_at": 1700003601
//	  },
//	  "VMUUID": "...", "SiteName": "SITE", ...   // the APEL fields
//	}
//
// The APEL fields use the names and value forms of the record's APEL
// message: integer epoch seconds for cloud, accelerator and IP times,
// YYYY-MM-DDTHH:MM:SSZ strings for StAR and energy times, EndTime 0 for a
// running VM, capacities in bytes, the accelerator Type normalised. Absent
// values are left out. Storage records also carry the non-StAR fields
// (RecordName, Status, AttachedTo, AttachedDuration, VolumeCreationTime,
// ActiveDuration, Type) and GroupAttributes as a list of
// {"AttributeType", "Value"} objects. Strings are kept as they are
// (Logstash takes UTF-8): the ASCII folding and column-width cuts apply to
// SSM messages only. The lower-case keys are tally's own; no APEL field
// name is lower-case, so they cannot clash.
//
// r is validated first; an invalid record gives an error wrapping
// ErrInvalid.
func FieldMap(r *tallyv1.Record) (map[string]any, error) {
	if err := Validate(r); err != nil {
		return nil, err
	}
	var fs fields
	switch p := r.GetPayload().(type) {
	case *tallyv1.Record_Cloud:
		fs = cloudFields(p.Cloud, fs)
	case *tallyv1.Record_Accelerator:
		fs = acceleratorFields(p.Accelerator, fs)
	case *tallyv1.Record_Ip:
		fs = ipFields(p.Ip, fs)
	case *tallyv1.Record_Storage:
		fs = storageFields(p.Storage, fs)
	case *tallyv1.Record_Energy:
		fs = energyFields(p.Energy, fs)
	}
	m := make(map[string]any, len(fs)+3)
	for _, f := range fs {
		switch f.kind {
		case kindString:
			m[f.key] = f.str
		case kindInt:
			m[f.key] = f.num
		case kindFloat:
			m[f.key] = f.flt
		}
	}
	if s := r.GetStorage(); s != nil && len(s.GetGroupAttributes()) > 0 {
		gas := make([]map[string]string, 0, len(s.GetGroupAttributes()))
		for _, ga := range s.GetGroupAttributes() {
			gas = append(gas, map[string]string{"AttributeType": ga.GetAttributeType(), "Value": ga.GetValue()})
		}
		m["GroupAttributes"] = gas
	}
	m["record_type"] = typeName(r)
	if k := r.GetKey(); k != "" {
		m["record_key"] = k
	}
	if p := provenance(r.GetProvenance()); len(p) > 0 {
		m["provenance"] = p
	}
	return m, nil
}

func provenance(p *tallyv1.Provenance) map[string]any {
	m := map[string]any{}
	for k, v := range map[string]string{
		"region": p.GetRegion(), "site": p.GetSite(), "service": p.GetService(),
		"extractor": p.GetExtractor(), "project_id": p.GetProjectId(),
	} {
		if v != "" {
			m[k] = v
		}
	}
	for k, v := range map[string]*timestamppb.Timestamp{
		"window_from": p.GetWindowFrom(), "window_to": p.GetWindowTo(), "extracted_at": p.GetExtractedAt(),
	} {
		if v != nil {
			m[k] = v.GetSeconds()
		}
	}
	return m
}

// AppendJSONLine appends r's FieldMap as one line of JSON (keys sorted,
// UTF-8, no HTML escaping) ending in LF: one event for Logstash's
// json_lines codec.
func AppendJSONLine(dst []byte, r *tallyv1.Record) ([]byte, error) {
	m, err := FieldMap(r)
	if err != nil {
		return dst, err
	}
	buf := bytes.NewBuffer(dst)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	// Encode appends the LF itself.
	if err := enc.Encode(m); err != nil {
		return dst, fmt.Errorf("record %q as json: %w", r.GetKey(), err)
	}
	return buf.Bytes(), nil
}
