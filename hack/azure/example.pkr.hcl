# A real Packer azure-arm build against the Azure stand-in (packer-smoke.sh
# runs it; README.md, "Packer azure-arm builds"). Every endpoint and secret
# comes from the stand-in's ready line, as variables.
packer {
  required_plugins {
    azure = {
      source  = "github.com/hashicorp/azure"
      version = ">= 1.4.5"
    }
  }
}

variable "subscription_id" { type = string }
variable "tenant_id" { type = string }
variable "client_id" { type = string }
variable "client_secret" {
  type      = string
  sensitive = true
}
variable "metadata_host" { type = string }          # ready line: metadata_host (TLS, host:port)
variable "cloud_environment_name" { type = string } # ready line: cloud_environment_name
variable "resource_group" { type = string }         # ready line: resource_group (kiln-test)
variable "gallery" { type = string }                # ready line: gallery (kilngallery)
variable "image_definition" { type = string }       # ready line: image_definition (base)
variable "source_image" { type = string }           # a managed image seeded in resource_group
variable "image_name" { type = string }             # the managed image to make
variable "image_version" { type = string }          # the gallery image version to make
variable "replication_regions" { type = list(string) }
variable "communicator" {
  type    = string
  default = "ssh"
}
variable "ssh_port" { # ready line: ssh_port (the stand-in's SSH responder)
  type    = number
  default = 22
}

source "azure-arm" "kiln" {
  metadata_host          = var.metadata_host
  cloud_environment_name = var.cloud_environment_name
  subscription_id        = var.subscription_id
  tenant_id              = var.tenant_id
  client_id              = var.client_id
  client_secret          = var.client_secret

  build_resource_group_name                = var.resource_group
  os_type                                  = "Linux"
  vm_size                                  = "Standard_B1s"
  custom_managed_image_name                = var.source_image
  custom_managed_image_resource_group_name = var.resource_group

  communicator = var.communicator
  ssh_username = "packer"
  ssh_port     = var.ssh_port
  ssh_timeout  = "2m"

  managed_image_name                = var.image_name
  managed_image_resource_group_name = var.resource_group
  shared_image_gallery_destination {
    subscription        = var.subscription_id
    resource_group      = var.resource_group
    gallery_name        = var.gallery
    image_name          = var.image_definition
    image_version       = var.image_version
    replication_regions = var.replication_regions
  }
  azure_tags = {
    "kiln-build" = "packer-smoke"
    "kiln-image" = var.image_name
  }
}

build {
  sources = ["source.azure-arm.kiln"]

  # Runs over the stand-in's SSH responder: the script is uploaded (scp) and
  # "executed" (every command answers exit status 0; nothing runs).
  provisioner "shell" {
    inline = ["echo kiln was here"]
  }
}
