package apel

import (
	tallyv1 "github.com/tally-accounting/tally/pkg/gen/tally/v1"
)

// EMI StAR storage records, XML (apel-formats.md §4): one line, no XML
// declaration, ASCII with numeric character references, laid out as
// cASO's ElementTree writes it:
//
//	<sr:StorageUsageRecords xmlns:sr="http://eu-emi.eu/namespaces/2011/02/storagerecord"><sr:StorageUsageRecord><sr:RecordIdentity sr:createTime="2026-11-02T10:00:00Z" sr:recordId="..." /><sr:StorageSystem>...</sr:StorageSystem>...</sr:StorageUsageRecord></sr:StorageUsageRecords>
//
// Attributes carry the sr: prefix (APEL reads them namespace-qualified),
// times are UTC YYYY-MM-DDTHH:MM:SSZ (cASO writes local naive times that
// APEL reads as UTC), and the capacity is in bytes. The fields of
// StorageRecord numbered 30 and up are not StAR and are not written.
const (
	// StarNamespace is the StAR XML namespace.
	StarNamespace = "http://eu-emi.eu/namespaces/2011/02/storagerecord"
	storageHeader = `<sr:StorageUsageRecords xmlns:sr="` + StarNamespace + `">`
	storageFooter = `</sr:StorageUsageRecords>`
)

func appendElem(dst []byte, name, text string) []byte {
	dst = append(dst, "<sr:"...)
	dst = append(dst, name...)
	dst = append(dst, '>')
	dst = appendXMLText(dst, truncate(text, maxString))
	dst = append(dst, "</sr:"...)
	dst = append(dst, name...)
	return append(dst, '>')
}

func appendOptElem(dst []byte, name string, text *string) []byte {
	if text == nil || *text == "" {
		return dst
	}
	return appendElem(dst, name, *text)
}

func appendIntElem(dst []byte, name string, v int64) []byte {
	dst = append(dst, "<sr:"...)
	dst = append(dst, name...)
	dst = append(dst, '>')
	dst = appendInt(dst, v)
	dst = append(dst, "</sr:"...)
	dst = append(dst, name...)
	return append(dst, '>')
}

// appendStorage writes one sr:StorageUsageRecord, elements in the StAR
// schema's order (cASO's, plus the optional elements cASO never fills).
func appendStorage(dst []byte, s *tallyv1.StorageRecord) []byte {
	dst = append(dst, "<sr:StorageUsageRecord><sr:RecordIdentity"...)
	if s.CreateTime != nil {
		dst = append(dst, ` sr:createTime="`...)
		dst = appendISO(dst, s.CreateTime.AsTime())
		dst = append(dst, '"')
	}
	dst = append(dst, ` sr:recordId="`...)
	dst = appendXMLText(dst, truncate(s.GetRecordId(), maxString))
	dst = append(dst, `" />`...)
	if v := s.GetStorageSystem(); v != "" {
		dst = appendElem(dst, "StorageSystem", v)
	}
	dst = appendOptElem(dst, "Site", s.Site)
	dst = appendOptElem(dst, "StorageShare", s.StorageShare)
	dst = appendOptElem(dst, "StorageMedia", s.StorageMedia)
	dst = appendOptElem(dst, "StorageClass", s.StorageClass)
	if s.FileCount != nil {
		dst = appendIntElem(dst, "FileCount", s.GetFileCount())
	}
	dst = appendOptElem(dst, "DirectoryPath", s.DirectoryPath)
	if s.GetLocalUser() != "" || s.GetLocalGroup() != "" || s.GetUserIdentity() != "" || s.GetGroup() != "" || len(s.GetGroupAttributes()) > 0 {
		dst = append(dst, "<sr:SubjectIdentity>"...)
		dst = appendOptElem(dst, "LocalUser", s.LocalUser)
		dst = appendOptElem(dst, "LocalGroup", s.LocalGroup)
		dst = appendOptElem(dst, "UserIdentity", s.UserIdentity)
		dst = appendOptElem(dst, "Group", s.Group)
		for _, ga := range s.GetGroupAttributes() {
			dst = append(dst, `<sr:GroupAttribute sr:attributeType="`...)
			dst = appendXMLText(dst, truncate(ga.GetAttributeType(), maxString))
			dst = append(dst, `">`...)
			dst = appendXMLText(dst, truncate(ga.GetValue(), maxString))
			dst = append(dst, "</sr:GroupAttribute>"...)
		}
		dst = append(dst, "</sr:SubjectIdentity>"...)
	}
	if s.StartTime != nil {
		dst = appendElem(dst, "StartTime", string(appendISO(nil, s.StartTime.AsTime())))
	}
	if s.EndTime != nil {
		dst = appendElem(dst, "EndTime", string(appendISO(nil, s.EndTime.AsTime())))
	}
	dst = appendIntElem(dst, "ResourceCapacityUsed", s.GetResourceCapacityUsed())
	if s.LogicalCapacityUsed != nil {
		dst = appendIntElem(dst, "LogicalCapacityUsed", s.GetLogicalCapacityUsed())
	}
	if s.ResourceCapacityAllocated != nil {
		dst = appendIntElem(dst, "ResourceCapacityAllocated", s.GetResourceCapacityAllocated())
	}
	return append(dst, "</sr:StorageUsageRecord>"...)
}

// storageFields lists s's fields flat, under the names APEL's StAR parser
// gives them, for FieldMap; the non-StAR fields follow under cASO's names.
func storageFields(s *tallyv1.StorageRecord, fs fields) fields {
	fs.str("RecordId", s.GetRecordId())
	fs.iso("CreateTime", s.CreateTime)
	fs.str("StorageSystem", s.GetStorageSystem())
	fs.optStr("Site", s.Site)
	fs.optStr("StorageShare", s.StorageShare)
	fs.optStr("StorageMedia", s.StorageMedia)
	fs.optStr("StorageClass", s.StorageClass)
	fs.optInt("FileCount", s.FileCount)
	fs.optStr("DirectoryPath", s.DirectoryPath)
	fs.optStr("LocalUser", s.LocalUser)
	fs.optStr("LocalGroup", s.LocalGroup)
	fs.optStr("UserIdentity", s.UserIdentity)
	fs.optStr("Group", s.Group)
	fs.iso("StartTime", s.StartTime)
	fs.iso("EndTime", s.EndTime)
	fs.int("ResourceCapacityUsed", s.GetResourceCapacityUsed())
	fs.optInt("LogicalCapacityUsed", s.LogicalCapacityUsed)
	fs.optInt("ResourceCapacityAllocated", s.ResourceCapacityAllocated)
	fs.optStr("RecordName", s.RecordName)
	fs.optStr("Status", s.VolumeStatus)
	fs.optStr("AttachedTo", s.AttachedTo)
	fs.optInt("AttachedDuration", s.AttachedDuration)
	fs.iso("VolumeCreationTime", s.VolumeCreationTime)
	fs.optInt("ActiveDuration", s.ActiveDuration)
	fs.optStr("Type", s.StorageType)
	return fs
}

// validateStorage reports what APEL's StAR loader rejects: a missing
// RecordId, CreateTime, StorageSystem, StartTime or EndTime (all
// mandatory), negative sizes or counts, and a GroupAttribute without a
// type.
func validateStorage(s *tallyv1.StorageRecord) *FieldError {
	const t = "storage"
	switch {
	case nullLike(s.GetRecordId()):
		return fieldErr(t, "RecordId", "is missing")
	case nullLike(s.GetStorageSystem()):
		return fieldErr(t, "StorageSystem", "is missing")
	}
	if _, p := timeOK(s.CreateTime); p != "" {
		return fieldErr(t, "CreateTime", "%s", p)
	}
	if _, p := timeOK(s.StartTime); p != "" {
		return fieldErr(t, "StartTime", "%s", p)
	}
	if _, p := timeOK(s.EndTime); p != "" {
		return fieldErr(t, "EndTime", "%s", p)
	}
	if n := s.GetResourceCapacityUsed(); n < 0 {
		return fieldErr(t, "ResourceCapacityUsed", "is negative (%d)", n)
	}
	for _, f := range []struct {
		name string
		v    *int64
	}{
		{"FileCount", s.FileCount}, {"LogicalCapacityUsed", s.LogicalCapacityUsed},
		{"ResourceCapacityAllocated", s.ResourceCapacityAllocated},
	} {
		if f.v != nil && *f.v < 0 {
			return fieldErr(t, f.name, "is negative (%d)", *f.v)
		}
	}
	for _, ga := range s.GetGroupAttributes() {
		if nullLike(ga.GetAttributeType()) {
			return fieldErr(t, "GroupAttribute", "has no attributeType")
		}
	}
	return nil
}
