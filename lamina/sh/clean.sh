# clean: SD — prepare the layer store and clear its staging area.
store
clean
df -Pk -- "$SD/staging" | tail -n 1
