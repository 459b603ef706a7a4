# Offline smoke template for hack/packer/check-offline.sh: one source per
# plugin built by setup.sh, with fake credentials and every option that would
# otherwise make `packer validate` talk to a cloud API switched off.
# Nothing here is ever built.
packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.0.0"
    }
    googlecompute = {
      source  = "github.com/hashicorp/googlecompute"
      version = ">= 1.0.0"
    }
    azure = {
      source  = "github.com/hashicorp/azure"
      version = ">= 1.0.0"
    }
    openstack = {
      source  = "github.com/hashicorp/openstack"
      version = ">= 1.0.0"
    }
    digitalocean = {
      source  = "github.com/digitalocean/digitalocean"
      version = ">= 1.4.0"
    }
    # the same plugin under its pre-2023 source, as older templates name it
    digitalocean-hashicorp = {
      source  = "github.com/hashicorp/digitalocean"
      version = ">= 1.0.0"
    }
  }
}

source "amazon-ebs" "kiln" {
  region                     = "eu-west-1"
  source_ami                 = "ami-0123456789abcdef0"
  instance_type              = "t3.micro"
  ssh_username               = "debian"
  ami_name                   = "kiln-offline-check"
  access_key                 = "AKIAKILNOFFLINECHECK"
  secret_key                 = "not-a-secret"
  skip_credential_validation = true
  skip_region_validation     = true
  skip_metadata_api_check    = true
}

source "googlecompute" "kiln" {
  project_id   = "kiln-offline-check"
  zone         = "europe-west1-b"
  source_image = "debian-12-bookworm-v20240101"
  ssh_username = "debian"
  image_name   = "kiln-offline-check"
  access_token = "not-a-token"
}

source "azure-arm" "kiln" {
  subscription_id                   = "00000000-0000-0000-0000-000000000000"
  tenant_id                         = "00000000-0000-0000-0000-000000000000"
  client_id                         = "00000000-0000-0000-0000-000000000000"
  client_secret                     = "not-a-secret"
  location                          = "westeurope"
  vm_size                           = "Standard_B1s"
  os_type                           = "Linux"
  image_publisher                   = "Debian"
  image_offer                       = "debian-12"
  image_sku                         = "12"
  managed_image_name                = "kiln-offline-check"
  managed_image_resource_group_name = "kiln"
  ssh_username                      = "debian"
}

source "openstack" "kiln" {
  identity_endpoint = "http://127.0.0.1:5000/v3"
  username          = "kiln"
  password          = "not-a-secret"
  tenant_name       = "kiln"
  domain_name       = "Default"
  region            = "RegionOne"
  flavor            = "m1.small"
  source_image      = "00000000-0000-0000-0000-000000000000"
  image_name        = "kiln-offline-check"
  ssh_username      = "debian"
}

source "digitalocean" "kiln" {
  api_token     = "not-a-token"
  image         = "debian-12-x64"
  region        = "nyc3"
  size          = "s-1vcpu-1gb"
  ssh_username  = "root"
  snapshot_name = "kiln-offline-check"
}

build {
  sources = [
    "source.amazon-ebs.kiln",
    "source.googlecompute.kiln",
    "source.azure-arm.kiln",
    "source.openstack.kiln",
    "source.digitalocean.kiln",
  ]
}
