// Drives the Compute stand-in with Google's own Go client
// (google.golang.org/api/compute/v1 v0.311.0), authenticated the two ways
// Google's libraries do with a service-account key file: the googlecompute
// Packer plugin's (google.CredentialsFromJSON + option.WithCredentials, token
// exchange at token_uri) and cloud.google.com/go/auth's
// (option.WithAuthCredentialsFile). The endpoint is option.WithEndpoint(api_url),
// which is what the plugin's `custom_endpoints = { compute = ... }` does.
// It makes the calls the plugin makes for a build (communicator "none"),
// then kiln's image calls. Usage: goclient '<run.py ready line>'.
// hack/gce/smoke.sh runs it with GO_CLIENT=1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"time"

	"golang.org/x/oauth2/google"
	compute "google.golang.org/api/compute/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"
)

type ready struct {
	APIURL          string `json:"api_url"`
	Project         string `json:"project"`
	CredentialsFile string `json:"credentials_file"`
}

var failures int

func check(what string, err error) {
	if err != nil {
		failures++
		fmt.Printf("   FAILED: %s: %v\n", what, err)
		return
	}
	fmt.Printf("   ok: %s\n", what)
}

func waitOp(svc *compute.Service, project string, op *compute.Operation) error {
	for i := 0; i < 100; i++ {
		var err error
		if op.Zone != "" {
			op, err = svc.ZoneOperations.Get(project, path.Base(op.Zone), op.Name).Do()
		} else {
			op, err = svc.GlobalOperations.Wait(project, op.Name).Do()
		}
		if err != nil {
			return err
		}
		if op.Status == "DONE" {
			if op.Error != nil {
				return fmt.Errorf("operation error: %v", op.Error.Errors[0].Message)
			}
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("operation %s not DONE", op.Name)
}

func main() {
	var r ready
	if err := json.Unmarshal([]byte(os.Args[1]), &r); err != nil {
		panic(err)
	}
	ctx := context.Background()
	p := r.Project
	zone := "us-central1-a"

	// 1. The googlecompute plugin's way: google.CredentialsFromJSON + option.WithCredentials + custom endpoint.
	data, err := os.ReadFile(r.CredentialsFile)
	check("read key file", err)
	creds, err := google.CredentialsFromJSON(ctx, data, "https://www.googleapis.com/auth/compute",
		"https://www.googleapis.com/auth/devstorage.full_control", "https://www.googleapis.com/auth/userinfo.email")
	check("google.CredentialsFromJSON", err)
	svc, err := compute.NewService(ctx, option.WithCredentials(creds), option.WithEndpoint(r.APIURL))
	check("compute.NewService(WithCredentials, WithEndpoint(api_url))", err)

	_, err = svc.Zones.Get(p, zone).Do()
	check("zones.get", err)
	mt, err := svc.MachineTypes.Get(p, zone, "e2-standard-2").Do()
	check("machineTypes.get", err)
	_, err = svc.Projects.Get(p).Do()
	check("projects.get", err)
	src, err := svc.Images.GetFromFamily("debian-cloud", "debian-12").Do()
	check("images.getFromFamily debian-cloud/debian-12", err)
	_, err = svc.Images.Get(p, "go-client-image").Do()
	if e, ok := err.(*googleapi.Error); ok && e.Code == 404 && len(e.Errors) == 1 && e.Errors[0].Reason == "notFound" {
		check("images.get of a missing image: googleapi.Error 404 notFound", nil)
	} else {
		check("images.get of a missing image: googleapi.Error 404 notFound", fmt.Errorf("got %v", err))
	}
	name := fmt.Sprintf("go-client-%d", time.Now().Unix())
	value := "TRUE"
	inst := &compute.Instance{
		AdvancedMachineFeatures: &compute.AdvancedMachineFeatures{},
		Disks: []*compute.AttachedDisk{{Type: "PERSISTENT", Mode: "READ_WRITE", Kind: "compute#attachedDisk",
			Boot: true, AutoDelete: false, InitializeParams: &compute.AttachedDiskInitializeParams{
				SourceImage: src.SelfLink, DiskName: name, DiskSizeGb: 20,
				DiskType: fmt.Sprintf("zones/%s/diskTypes/pd-standard", zone)}}},
		MachineType: mt.SelfLink,
		Metadata:    &compute.Metadata{Items: []*compute.MetadataItems{{Key: "block-project-ssh-keys", Value: &value}}},
		Name:        name,
		NetworkInterfaces: []*compute.NetworkInterface{{AccessConfigs: []*compute.AccessConfig{{
			Name: "AccessConfig created by Packer", Type: "ONE_TO_ONE_NAT"}}, Network: "global/networks/default"}},
		Scheduling:      &compute.Scheduling{OnHostMaintenance: "MIGRATE"},
		ServiceAccounts: []*compute.ServiceAccount{{Email: "default", Scopes: []string{"https://www.googleapis.com/auth/compute"}}},
		Tags:            &compute.Tags{},
	}
	op, err := svc.Instances.Insert(p, zone, inst).Do()
	check("instances.insert (the plugin's body)", err)
	if err == nil {
		check("zoneOperations.get until DONE", waitOp(svc, p, op))
	}
	got, err := svc.Instances.Get(p, zone, name).Do()
	check("instances.get", err)
	if err == nil && got.Status != "RUNNING" {
		check("instance RUNNING", fmt.Errorf("status %s", got.Status))
	}
	out, err := svc.Instances.GetSerialPortOutput(p, zone, name).Do()
	check("instances.getSerialPortOutput", err)
	if err == nil && out.Next == 0 {
		check("serial output next", fmt.Errorf("next is 0"))
	}
	op, err = svc.Instances.Delete(p, zone, name).Do()
	check("instances.delete", err)
	if err == nil {
		check("zoneOperations.get until DONE", waitOp(svc, p, op))
	}
	img := &compute.Image{Name: name, Family: "go-client", Labels: map[string]string{"kiln-namespace": "go"},
		SourceDisk: fmt.Sprintf("/compute/v1/projects/%s/zones/%s/disks/%s", p, zone, name), SourceType: "RAW",
		GuestOsFeatures: []*compute.GuestOsFeature{{Type: "UEFI_COMPATIBLE"}}}
	op, err = svc.Images.Insert(p, img).Do()
	check("images.insert from the disk", err)
	if err == nil {
		check("globalOperations.wait until DONE", waitOp(svc, p, op))
	}
	gotImg, err := svc.Images.Get(p, name).Do()
	check("images.get", err)
	if err == nil && (gotImg.Status != "READY" || gotImg.DiskSizeGb != 20) {
		check("image READY, diskSizeGb 20", fmt.Errorf("status %s size %d", gotImg.Status, gotImg.DiskSizeGb))
	}
	_, err = svc.Images.Deprecate(p, name, &compute.DeprecationStatus{}).Do()
	check("images.deprecate with an empty DeprecationStatus (as the plugin does)", err)
	op, err = svc.Disks.Delete(p, zone, name).Do()
	check("disks.delete", err)
	if err == nil {
		check("zoneOperations.get until DONE", waitOp(svc, p, op))
	}

	// 2. kiln's image calls through the same client.
	op, err = svc.Images.SetLabels(p, name, &compute.GlobalSetLabelsRequest{
		LabelFingerprint: gotImg.LabelFingerprint, Labels: map[string]string{"kiln-namespace": "go", "x": "y"}}).Do()
	check("images.setLabels", err)
	_, err = svc.Images.SetLabels(p, name, &compute.GlobalSetLabelsRequest{
		LabelFingerprint: gotImg.LabelFingerprint, Labels: map[string]string{}}).Do()
	if e, ok := err.(*googleapi.Error); ok && e.Code == 412 {
		check("images.setLabels with a stale fingerprint: 412", nil)
	} else {
		check("images.setLabels with a stale fingerprint: 412", fmt.Errorf("got %v", err))
	}
	n := 0
	err = svc.Images.List(p).Filter(`labels.kiln-namespace = "go"`).MaxResults(1).Pages(ctx, func(l *compute.ImageList) error {
		n += len(l.Items)
		return nil
	})
	check(fmt.Sprintf("images.list filter + Pages (found %d)", n), err)
	_, err = svc.Images.Deprecate(p, name, &compute.DeprecationStatus{State: "DEPRECATED"}).Do()
	check("images.deprecate DEPRECATED", err)
	_, err = svc.Images.GetFromFamily(p, "go-client").Do()
	if e, ok := err.(*googleapi.Error); ok && e.Code == 404 {
		check("getFromFamily skips the deprecated image (404)", nil)
	} else {
		check("getFromFamily skips the deprecated image (404)", fmt.Errorf("got %v", err))
	}
	op, err = svc.Images.Delete(p, name).Do()
	check("images.delete", err)
	if err == nil {
		check("globalOperations.wait until DONE", waitOp(svc, p, op))
	}

	// 3. The newer auth library: WithAuthCredentialsFile (cloud.google.com/go/auth).
	svc2, err := compute.NewService(ctx, option.WithAuthCredentialsFile(option.ServiceAccount, r.CredentialsFile),
		option.WithEndpoint(r.APIURL))
	check("compute.NewService(WithAuthCredentialsFile, WithEndpoint)", err)
	if err == nil {
		_, err = svc2.Zones.List(p).Do()
		check("zones.list with WithAuthCredentialsFile", err)
	}
	fmt.Printf("go client: %d failures\n", failures)
	if failures > 0 {
		os.Exit(1)
	}
}
